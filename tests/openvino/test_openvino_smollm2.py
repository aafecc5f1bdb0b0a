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
    return aipc.load(str(smollm2), backend="openvino", precision="int4", device="CPU")


def test_int4_answers_paris(smol_int4):
    answer = smol_int4.complete("What is the capital of France?", max_new_tokens=24)
    assert "Paris" in answer, answer


def test_int4_recipe_for_a_small_model(smol_int4):
    """Hidden 576: group 32 (divides it; group 128 does not, and loses the answers' first tokens)."""
    options = Manifest.read(smol_int4.artifact_dir).options
    assert (options["sym"], options["group_size"], options["ratio"]) == (True, 32, 0.6)
    assert "adjusted_group_sizes" not in options
    assert smol_int4.context_length == 8192


def test_int4_first_answer_tokens_follow_the_reference(smollm2, smol_int4, stream_raw):
    reference = aipc.load(str(smollm2), backend="transformers", precision="fp32")
    prompts = ("Can you introduce yourself?", "What is the capital of France?", "Count from one to ten.", "Tell me a story.")
    agreed = sum(stream_raw(smol_int4, p, max_new_tokens=1, ignore_eos=True)[1]
                 == stream_raw(reference, p, max_new_tokens=1, ignore_eos=True)[1] for p in prompts)
    assert agreed >= 3, f"int4 picks the reference's first answer token on {agreed} of 4 prompts"


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
