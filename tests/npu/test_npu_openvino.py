"""The default engine on the CPU stand-in (NPU-EMU): OpenVINO GenAI's NPU pipeline with
NPUW_DEVICES=CPU and NPUW_ONLINE_PIPELINE=NONE, against the plain CPU LLMPipeline on the same IR
and against the reference backend; the NPU limits; cancellation."""

from __future__ import annotations

import pytest

import aipc
from aipc.errors import InvalidConfigError, PromptTooLongError
from aipc.types import GenerationConfig
from npu_support import EMU, PROMPTS, agreement, needs_engine, raw

pytestmark = needs_engine("openvino")
ENGINE = "openvino"
TOKENS = 16


@pytest.fixture(scope="session")
def cpu_pipeline():
    """``cpu_pipeline(model)`` -> ids of the plain CPU LLMPipeline (f32) on the same artifact."""
    import openvino_genai

    pipes = {}

    def greedy(model: aipc.Model, prompt: str) -> list[int]:
        folder = str(model.artifact_dir)
        if folder not in pipes:
            pipes[folder] = openvino_genai.LLMPipeline(folder, "CPU", INFERENCE_PRECISION_HINT="f32")
        pipe = pipes[folder]
        config = openvino_genai.GenerationConfig(max_new_tokens=TOKENS, ignore_eos=True, do_sample=False,
                                                 apply_chat_template=False)
        ids = pipe.get_tokenizer().encode(model.format_prompt(prompt), add_special_tokens=False)
        return [int(i) for i in pipe.generate(ids, config).tokens[0]]

    return greedy


def test_the_stand_in_is_the_npu_pipeline_on_cpu(npu_models):
    model = npu_models(ENGINE, "fp16")
    extra = model.loaded.extra
    assert extra["runtime_device"] == "NPU" and extra["emulated"] is True
    config = extra["config"]
    assert (config["NPUW_DEVICES"], config["NPUW_ONLINE_PIPELINE"]) == ("CPU", "NONE")
    assert (config["MAX_PROMPT_LEN"], config["MIN_RESPONSE_LEN"]) == (1024, 128)
    assert model.loaded.context_length == 1024 + 128  # the KV cache the NPU pipeline is compiled with
    model.complete("Hello", max_new_tokens=3, ignore_eos=True)
    assert "not NPU performance" in model.loaded.extra["perf"]["note"]


def test_fp16_greedy_tokens_equal_the_cpu_pipeline(npu_models, cpu_pipeline, reference):
    """The NPU pipeline (on the stand-in) gives the plain CPU pipeline's tokens on the same IR.
    Against the fp32 reference, fp16 weights are a measure: measured 16, 14, 16, 16 leading
    tokens of 16 (the CPU pipeline on the same IR gives the same 14: weight rounding, a near tie)."""
    model = npu_models(ENGINE, "fp16")
    rows = []
    for prompt in PROMPTS:
        _, got, count = raw(model, prompt, max_new_tokens=TOKENS, ignore_eos=True)
        assert count == TOKENS
        assert got == cpu_pipeline(model, prompt), f"{prompt!r}: NPU pipeline differs from the CPU pipeline"
        rows.append(agreement(got, raw(reference, prompt, max_new_tokens=TOKENS, ignore_eos=True)[1]))
    print(f"fp16: NPU-EMU vs reference fp32, leading tokens agreeing of {TOKENS}: {rows}")
    assert min(rows) >= 8, rows


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_compressed_precisions_start_like_the_cpu_pipeline(npu_models, cpu_pipeline, precision):
    """On compressed weights NPUW decompresses in f16 on the host (as it does for a real NPU), so
    tokens leave the CPU pipeline's after a few steps (measured on the four prompts: int8
    [7, 7, 5, 15], int4 [16, 2, 16, 10] of 16 on one machine, int4 [0, 15, 9, 16] on an AVX2-only
    AMD EPYC, where one prompt's first token is a near-tie of the random model); the first tokens
    must agree on all prompts but one (a broken conversion agrees on none)."""
    model = npu_models(ENGINE, precision)
    agreed = []
    for prompt in PROMPTS:
        _, got, _ = raw(model, prompt, max_new_tokens=TOKENS, ignore_eos=True)
        agreed.append(agreement(got, cpu_pipeline(model, prompt)))
    print(f"{precision}: NPU-EMU vs CPU LLMPipeline, leading tokens agreeing of {TOKENS}: {agreed}")
    assert sorted(agreed)[1] >= 1, agreed


def test_prompt_over_max_prompt_len_is_refused(npu_models):
    model = npu_models(ENGINE, "int4", MAX_PROMPT_LEN="32", MIN_RESPONSE_LEN="16")
    assert model.loaded.context_length == 48
    long_prompt = model.format_prompt("hello " * 40)
    with pytest.raises(PromptTooLongError, match="MAX_PROMPT_LEN"):
        list(model.raw_stream(long_prompt, GenerationConfig(max_new_tokens=4)))
    # within the limit it runs, and the answer stops where the KV cache is full
    _, ids, count = raw(model, "Hi", max_new_tokens=200, ignore_eos=True)
    prompt_tokens = len(model.tokenize(model.format_prompt("Hi")))
    assert count == 48 - prompt_tokens


def test_batch_and_beam_search_are_refused(npu_models):
    from aipc_npu.genai_engine import _map_error, generate

    model = npu_models(ENGINE, "int4")
    prompt = model.format_prompt("Hello")
    with pytest.raises(InvalidConfigError, match="batch size 1"):
        list(generate(model.loaded, [prompt, prompt], GenerationConfig(max_new_tokens=2)))
    with pytest.raises(InvalidConfigError, match="beam search"):
        list(generate(model.loaded, prompt, GenerationConfig(max_new_tokens=2), num_beams=2))
    # and if a caller reaches the runtime itself, its refusals become the same clean errors
    import openvino_genai

    pipe = model.loaded.runtime.pipe
    for call in (lambda: pipe.generate([prompt, prompt], openvino_genai.GenerationConfig(max_new_tokens=2)),
                 lambda: pipe.generate(prompt, openvino_genai.GenerationConfig(max_new_tokens=2, num_beams=2))):
        with pytest.raises(RuntimeError) as caught:
            call()
        assert isinstance(_map_error(caught.value), InvalidConfigError)


def test_sampling_with_a_seed_repeats(npu_models):
    model = npu_models(ENGINE, "fp16")
    settings = dict(max_new_tokens=12, ignore_eos=True, temperature=1.0)
    first = raw(model, "Tell me a story.", seed=5, **settings)[1]
    assert first == raw(model, "Tell me a story.", seed=5, **settings)[1]


def test_closing_the_stream_stops_the_runtime(npu_models):
    model = npu_models(ENGINE, "fp16")
    stream = model.raw_stream(model.format_prompt("Tell me a story."), GenerationConfig(max_new_tokens=500, ignore_eos=True))
    next(iter(stream))
    stream.close()
    assert model.complete("Hello", max_new_tokens=3, ignore_eos=True) is not None
    assert model.usage.generated_tokens == 3


def test_a_longrope_crossing_is_re_encoded():
    """A LongRoPE answer crossing the original context goes on from the whole sequence prefilled
    afresh (the long factors at every position): its tokens after the crossing are the pipeline's
    own answer to the prompt plus the tokens before it, sent as one prompt. Nothing is claimed exact
    on the NPU, so the conformance suite does not compare them with the reference's (measured on
    the stand-in at fp16: 16 of 16 agree; 6, the tokens before the crossing, without re-encoding)."""
    from aipc.testing import LONGROPE_ORIGINAL, prompt_of_length, tiny_phi3_cached
    from aipc_openvino_common import genai

    model = aipc.load(str(tiny_phi3_cached(0, "phi3-128k")), backend="npu", precision="fp16", device=EMU)
    try:
        prompt = prompt_of_length(model, 59)
        ids = model.tokenize(model.format_prompt(prompt))
        first = LONGROPE_ORIGINAL + 1 - len(ids)  # tokens generated before the crossing
        assert 0 < first < TOKENS
        _, got, _ = raw(model, prompt, max_new_tokens=TOKENS, ignore_eos=True)
        pipeline = model.loaded.runtime
        config = genai.generation_config(GenerationConfig(max_new_tokens=TOKENS - first, ignore_eos=True), pipeline.eos)
        rest = pipeline.pipe.generate(genai.ids_tensor(ids + got[:first]), config).tokens[0]
        assert got[first:] == [int(t) for t in rest]
    finally:
        model.close()


def test_engine_mismatch_is_refused(npu_models):
    model = npu_models(ENGINE, "fp16")
    with pytest.raises(InvalidConfigError, match="engine"):
        aipc.load(str(model.artifact_dir), backend="npu", device="NPU-EMU", options={"engine": "library"})


@pytest.mark.real_npu
def test_real_npu_runs_the_tiny_phi3(tiny):
    model = aipc.load(str(tiny), backend="npu", device="NPU", precision="int4")
    assert model.loaded.extra["emulated"] is False
    _, ids, count = raw(model, "Can you introduce yourself?", max_new_tokens=8, ignore_eos=True)
    assert count == 8 and "note" not in model.loaded.extra["perf"]
