"""The real SmolLM2-135M-Instruct (from the GGUF on PyPI) through the OpenVINO backend.

int4 is the default precision and the one with the group-size problem (hidden 576 is not a
multiple of 128): it must still answer correctly. fp16 must follow the reference greedily.
"""

from __future__ import annotations

import pytest

import aipc
from aipc.types import Manifest


@pytest.fixture(scope="session")
def smol_int4(smollm2) -> aipc.Model:
    # the recipe is judged on whole-prompt prefills: with prefix reuse int4's near-ties flip on 1-2
    # more of the 20 first tokens (README); reuse against a cold run is the conformance suite's check
    return aipc.load(str(smollm2), backend="openvino", precision="int4", device="CPU", cache_slots=0)


def test_int4_answers_paris(smol_int4):
    answer = smol_int4.complete("What is the capital of France?", max_new_tokens=24)
    assert "Paris" in answer, answer


def test_int4_recipe_for_a_small_model(smol_int4):
    """Hidden 576: group 64 (group 128 does not divide it, and loses the answers' first tokens), ratio 0.6."""
    options = Manifest.read(smol_int4.artifact_dir).options
    assert (options["sym"], options["group_size"], options["ratio"]) == (True, 64, 0.6)
    assert "adjusted_group_sizes" not in options
    assert smol_int4.context_length == 8192


def test_int4_first_answer_tokens_follow_the_reference(smollm2, smol_int4, stream_raw):
    """On the tuning set's 30 factual questions (aipc.conformance.questions), with the walkthrough's
    system prompt: at least 3 of 4 first answer tokens as the reference's. Measured on an Intel
    Xeon: 28 of 30 for the default (ratio 0.6), 25 for ratio 0.8; per-channel all-int4 (ratio 1.0,
    group -1) gets 22 and fails it. The suite's 10 open prompts (a story, a synonym) have near-tied
    first tokens: the conformance suite checks those (at least half)."""
    from aipc.conformance.questions import QUESTIONS
    from aipc.conformance.support import SYSTEM

    reference = aipc.load(str(smollm2), backend="transformers", precision="fp32")
    missed = [q for q, _ in QUESTIONS
              if stream_raw(smol_int4, q, max_new_tokens=1, ignore_eos=True, system=SYSTEM)[1]
              != stream_raw(reference, q, max_new_tokens=1, ignore_eos=True, system=SYSTEM)[1]]
    assert len(missed) <= len(QUESTIONS) // 4, f"int4 misses the reference's first answer token on {len(missed)} of {len(QUESTIONS)}: {missed}"


def test_fp16_follows_the_reference(smollm2, stream_raw):
    model = aipc.load(str(smollm2), backend="openvino", precision="fp16", device="CPU")
    reference = aipc.load(str(smollm2), backend="transformers", precision="fp32")
    for prompt in ("Tell me a story.", "What is the capital of France?"):
        # ignore_eos must make EOS impossible, as the reference does (not generate it and go on)
        _, want, _ = stream_raw(reference, prompt, max_new_tokens=32, ignore_eos=True)
        _, got, _ = stream_raw(model, prompt, max_new_tokens=32, ignore_eos=True)
        assert got == want, prompt
    assert "Paris" in model.complete("What is the capital of France?", max_new_tokens=24)


def test_aipc_run_answers_paris(smollm2, smol_int4, cli_run):
    """The command line, default precision (int4) of this backend; the artifact is the cached one."""
    done = cli_run("run", "--backend", "openvino", str(smollm2), "What is the capital of France?", "--json",
                   "-o", "threads=1")
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert (result["backend"], result["precision"]) == ("openvino", "int4")
    assert "Paris" in result["text"], result["text"]
