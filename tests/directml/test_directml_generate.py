"""Generation with onnxruntime-genai: agreement with the reference backend, exact token limits,
sampling, tokenization, cancellation, and the errors for bad input."""

from __future__ import annotations

import shutil

import pytest

import aipc
from aipc.errors import InvalidModelError, PromptTooLongError
from aipc.types import GenerationConfig

from directml_support import SYSTEM

PROMPTS = ("Can you introduce yourself?", "Count from one to ten.")


def raw(model, prompt, **settings):
    """The backend's own stream for a chat-templated prompt: (text, ids, token count)."""
    chunks = list(model.raw_stream(model.format_prompt(prompt, SYSTEM), GenerationConfig(**settings)))
    return "".join(c.text for c in chunks), [i for c in chunks for i in c.ids], sum(c.tokens for c in chunks)


@pytest.mark.parametrize(("precision", "device", "length"), [("fp32", "CPU", 32)])
def test_greedy_tokens_and_text_equal_the_reference(models, reference, precision, device, length):
    """fp32 agrees far (32 tokens here). fp16 is compared on the real SmolLM2 by the conformance
    suite: the random tiny model's near-tied logits flip under fp16 rounding."""
    model = models(precision, device)
    for prompt in PROMPTS:
        want_text, want, _ = raw(reference, prompt, max_new_tokens=length, ignore_eos=True)
        text, got, count = raw(model, prompt, max_new_tokens=length, ignore_eos=True)
        assert got == want and count == length
        assert text == want_text, "same tokens must stream the same text (invalid UTF-8 shown as U+FFFD)"


@pytest.mark.parametrize(("precision", "device"), [("int8", "CPU"), ("int4", "CPU"), ("int4", "AUTO")])
def test_quantized_models_run(models, reference, precision, device):
    model = models(precision, device)
    text, ids, count = raw(model, PROMPTS[0], max_new_tokens=12, ignore_eos=True)
    assert count == 12 and len(ids) == 12
    assert model.loaded.extra["provider"] == "cpu"


def test_repetition_penalty_matches_the_reference(models, reference):
    settings = dict(max_new_tokens=40, ignore_eos=True, repetition_penalty=1.5)
    assert raw(models("fp32"), PROMPTS[1], **settings)[1] == raw(reference, PROMPTS[1], **settings)[1]


@pytest.mark.parametrize("limit", [1, 2, 7, 33])
def test_max_new_tokens_excludes_the_prompt_exactly(models, limit):
    """onnxruntime-genai's max_length counts the prompt: the plugin maps it to prompt + limit."""
    model = models("int4")
    _, ids, count = raw(model, "Tell me a story.", max_new_tokens=limit, ignore_eos=True)
    assert count == len(ids) == limit


def test_eos_ends_early_and_ignore_eos_goes_on(models, reference):
    """Where the reference reaches EOS (greedy, raw prompt), onnxruntime-genai stops at the same
    token; with ignore_eos (its min_length) it runs through to max_new_tokens."""
    model = models("fp32")
    for prompt in ("Count to ten.", "Hello", "Tell me a story.", "The capital of France is"):
        stopped = reference.complete(prompt, raw=True, max_new_tokens=400)
        if reference.usage.finish_reason == "stop":
            break
    else:
        pytest.fail("the reference reached no EOS on any probe prompt: pick other prompts")
    limit = reference.usage.generated_tokens + 10
    assert model.complete(prompt, raw=True, max_new_tokens=limit) == stopped
    assert (model.usage.finish_reason, model.usage.generated_tokens) == ("stop", reference.usage.generated_tokens)
    full = model.complete(prompt, raw=True, max_new_tokens=limit, ignore_eos=True)
    assert (model.usage.finish_reason, model.usage.generated_tokens) == ("length", limit)
    assert full.startswith(stopped)


def test_search_options_map_every_setting():
    from aipc_directml.engine import search_options

    greedy = search_options(GenerationConfig(max_new_tokens=10), prompt_tokens=5, context=4096)
    assert greedy == {"max_length": 15, "min_length": 0, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}
    sampled = search_options(GenerationConfig(max_new_tokens=10, temperature=0.7, top_p=0.9, top_k=40, seed=3,
                                              ignore_eos=True, repetition_penalty=1.1), prompt_tokens=5, context=12)
    assert sampled == {"max_length": 12, "min_length": 12, "do_sample": True, "num_beams": 1, "repetition_penalty": 1.1,
                       "temperature": 0.7, "top_p": 0.9, "top_k": 40, "random_seed": 3}


def test_same_seed_same_sample(models):
    model = models("fp32")
    settings = dict(max_new_tokens=16, ignore_eos=True, temperature=1.0)
    first = raw(model, "Tell me a story.", seed=5, **settings)[1]
    assert first == raw(model, "Tell me a story.", seed=5, **settings)[1]
    greedy = raw(model, "Tell me a story.", max_new_tokens=16, ignore_eos=True)[1]
    samples = [first, *(raw(model, "Tell me a story.", seed=s, **settings)[1] for s in (6, 7))]
    assert any(s != greedy for s in samples)


def test_stop_strings_are_applied_by_the_core(models):
    model = models("fp32")
    full = model.complete("Tell me a story.", max_new_tokens=24, ignore_eos=True)
    stop = next(full[i:i + 3] for i in range(len(full) // 2, len(full) - 3) if full[i:i + 3].isalpha())
    text = model.complete("Tell me a story.", max_new_tokens=24, ignore_eos=True, stop=[stop])
    assert text == full[: full.find(stop)] and model.usage.finish_reason == "stop"


TEXTS = ("Hello world", " The capital of France is Paris.", "<|user|>\nHi<|end|>\n<|assistant|>",
         "héllo 🙂 ünïcode", "  two  spaces\n\nnewlines\t tab", "2024, 3.14, 42!")


def test_tokenize_equals_the_hugging_face_tokenizer(models, reference):
    model = models("int4")
    hf = reference.loaded.runtime[1]
    for text in TEXTS:
        assert model.tokenize(text) == hf(text, add_special_tokens=False)["input_ids"], text


def test_tokenize_adds_no_bos_even_when_the_tokenizer_would(artifacts, tmp_path):
    """A tokenizer that adds BOS (Llama/Phi-3 style post-processor): ids as add_special_tokens=False."""
    import json

    from transformers import AutoTokenizer

    folder = tmp_path / "bos"
    shutil.copytree(artifacts("int4"), folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    single = [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    data["post_processor"] = {"type": "TemplateProcessing", "single": single, "pair": single + [
        {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    model = aipc.load(str(folder), device="CPU")
    hf = AutoTokenizer.from_pretrained(str(folder))
    for text in ("Hello", "<s>Hello", TEXTS[2]):
        assert model.tokenize(text) == hf(text, add_special_tokens=False)["input_ids"]


def test_closing_the_stream_stops_and_the_model_stays_usable(models):
    model = models("int4")
    stream = model.raw_stream(model.format_prompt("Tell me a story."), GenerationConfig(max_new_tokens=500, ignore_eos=True))
    first = next(stream)
    assert first.tokens == 1
    stream.close()
    assert model.complete("Hello", max_new_tokens=3, ignore_eos=True) is not None
    assert model.usage.generated_tokens == 3


def test_prompt_longer_than_the_context_is_refused(models):
    model = models("int4")
    assert model.context_length == 4096
    with pytest.raises(PromptTooLongError):
        model.complete("hello " * 4200, max_new_tokens=2)
    with pytest.raises(PromptTooLongError):  # the hook itself checks too
        list(model.raw_stream("hello " * 4200, GenerationConfig(max_new_tokens=2)))


def test_threads_option_is_applied_and_checked(tiny, artifacts):
    model = aipc.load(str(artifacts("int4")), device="CPU", options={"threads": "2"})
    assert model.loaded.extra["threads"] == 2
    from aipc.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError):
        aipc.load(str(artifacts("int4")), device="CPU", options={"threads": "many"})


@pytest.mark.parametrize("damage", ["truncate-weights", "drop-model", "corrupt-config", "corrupt-manifest"])
def test_corrupt_artifacts_are_refused(artifacts, tmp_path, damage):
    folder = tmp_path / "broken"
    shutil.copytree(artifacts("int4"), folder)
    if damage == "truncate-weights":
        data = folder / "model.onnx.data"
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    elif damage == "drop-model":
        (folder / "model.onnx").unlink()
    elif damage == "corrupt-config":
        (folder / "genai_config.json").write_text("{not json")
    else:
        (folder / "aipc.json").write_text("{not json")
    with pytest.raises(InvalidModelError):
        aipc.load(str(folder), device="CPU").complete("Hello", max_new_tokens=2)
