"""The conformance suite: what every aipc backend must do, checked against the reference.

Tests run per backend (``backend_name``) or per backend, precision and present device.
A test is skipped only when the backend's capabilities declaration does not claim the
behaviour; a claim that does not hold is a failure whose message says what went wrong.

Measures:
- fp32 (if in ``capabilities.exact_precisions``): greedy token ids on the tiny Phi-3 equal the
  reference backend's for the first 16 tokens of two prompts.
- fp16 (if declared exact): the same on the real SmolLM2. A random model's logits have
  near-ties that fp16 rounding flips; a trained model's margins survive fp16.
- int8/int4: exact tokens are not a fair measure (data-free weight compression changes the
  trajectory after a few tokens, while answers stay right), so they must (a) answer the real
  SmolLM2's capital-of-France question correctly and (b) pick the same first answer token as
  the reference on at least half of 10 chat prompts. A broken conversion (wrong scales or
  layout) agrees on ~0; sound ones measured 6-9 of 10 here (DirectML int4 7, int8 9, the
  example's PyTorch dynamic int8 6): SmolLM2-135M has many near-tied first tokens. And (c) of
  the short factual questions in :mod:`aipc.conformance.questions` that the reference answers
  right, keep at least ``KEEP_FLOOR`` (0.4; a broken conversion keeps ~0); ``--aipc-keep int4=0.9``
  raises that bar for a project's own backends, as aipc's CI does for its own at what their
  default recipes measured (benchmarks/README.md).
"""

from __future__ import annotations

import re
import shutil

import pytest

import aipc
from aipc.conformance.questions import QUESTIONS
from aipc.conformance.support import AGREEMENT_PROMPTS, PROMPTS, REFERENCE, SYSTEM, run_raw
from aipc.errors import (
    AipcError,
    InvalidModelError,
    PromptTooLongError,
    UnsupportedPrecisionError,
)
from aipc.types import PRECISIONS, BackendInfo, GenerationConfig, Manifest

EXACT_TOKENS = 16
#: of the reference's right answers, at int8/int4: a floor that catches broken conversions (they keep
#: ~0), set below the weakest default measured (directml int4, the builder's recipe: 8 of 17 with
#: 20 answer tokens); `--aipc-keep` raises it per precision once the defaults are better (issue 16)
KEEP_FLOOR = 0.4
ANSWER_TOKENS = 20  # the fact comes in the first sentence; each token costs CI time


# ------------------------------------------------------------------ description and artifacts


def test_backend_describes_itself(backend_info: BackendInfo, backend_name: str):
    assert backend_info.name == backend_name
    assert backend_info.version, "version is empty"
    assert backend_info.devices, "no devices declared"
    for device in backend_info.devices:
        assert device.precisions, f"device {device.name} declares no precisions"
        assert set(device.precisions) <= set(PRECISIONS), f"{device.name}: unknown precisions {device.precisions}"
        if not device.present:
            assert device.reason, f"device {device.name} is absent but no reason is given"
    assert backend_info.default_precision in backend_info.precisions, "default precision is not offered"
    caps = backend_info.capabilities
    assert caps.max_batch_size >= 1
    assert set(caps.exact_precisions) <= set(PRECISIONS)


def test_quantize_writes_manifest_and_loads(pool, tiny_phi3, backend_name, precision, device):
    """Every declared precision quantizes, with a valid manifest, and loads and generates."""
    path = aipc.quantize(str(tiny_phi3), backend=backend_name, precision=precision, device=device)
    manifest = Manifest.read(path)
    assert (manifest.backend, manifest.precision) == (backend_name, precision)
    assert manifest.device.lower() == device.lower()
    from aipc.cache import fingerprint

    assert manifest.source.get("fingerprint") == fingerprint(tiny_phi3), "manifest does not fingerprint its source"
    assert manifest.versions.get("aipc"), "manifest lacks the aipc version"
    assert [p for p in path.iterdir() if p.name != "aipc.json"], "artifact folder holds nothing but the manifest"
    model = pool.get(tiny_phi3, backend_name, precision, device)
    assert model.precision == precision and model.artifact_dir == path
    model.complete("Hello", max_new_tokens=2, ignore_eos=True)
    assert model.usage.generated_tokens == 2, f"the {precision} artifact loaded but generated nothing"


def test_quantize_refuses_precisions_it_lacks(tiny_phi3, backend_info, present_device, tmp_path):
    """Called directly, the quantize hook must raise UnsupportedPrecisionError, not a bare error."""
    from aipc.plugins import registry
    from aipc.runtime import QuantizeRequest

    offered = backend_info.device(present_device).precisions
    missing = [p for p in PRECISIONS if p not in offered]
    if not missing:
        pytest.skip(f"{backend_info.name} offers every precision on {present_device}")
    request = QuantizeRequest(
        backend=backend_info.name, source_dir=tiny_phi3, output_dir=tmp_path, precision=missing[0],
        device=present_device, options={}, source={"name": "tiny"}, cache_dir=tmp_path,
    )
    with pytest.raises(UnsupportedPrecisionError):
        registry().call(backend_info.name, "aipc_quantize", request=request)


def test_corrupt_artifact_is_refused(pool, tiny_phi3, backend_info, present_device, tmp_path):
    """A truncated weights file or a broken manifest gives InvalidModelError on load."""
    precision = backend_info.device(present_device).precisions[0]
    path = aipc.quantize(str(tiny_phi3), backend=backend_info.name, precision=precision, device=present_device)
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    biggest = max((p for p in broken.rglob("*") if p.is_file() and p.name != "aipc.json"), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    with pytest.raises(InvalidModelError):
        aipc.load(str(broken), device=present_device).complete("Hello", max_new_tokens=2)
    (broken / "aipc.json").write_text("{not json")
    with pytest.raises(InvalidModelError):
        aipc.load(str(broken), device=present_device)


# ------------------------------------------------------------------ agreement with the reference


def _assert_same_greedy_tokens(model, reference):
    for prompt in PROMPTS[:2]:
        _, want, _ = run_raw(reference, prompt, max_new_tokens=EXACT_TOKENS, ignore_eos=True)
        _, got, _ = run_raw(model, prompt, max_new_tokens=EXACT_TOKENS, ignore_eos=True)
        assert got, "the backend yields no token ids (Chunk.ids), so its tokens cannot be compared"
        got = got[:EXACT_TOKENS]  # the length itself is test_max_new_tokens_is_exact's business
        agree = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        assert got == want, f"{prompt!r}: tokens differ from the reference after {agree} of {EXACT_TOKENS}: {got} vs {want}"


def test_greedy_tokens_match_reference(pool, tiny_phi3, backend_name, precision, device, backend_info):
    """fp32 on the tiny Phi-3: the same weights and the same architecture give the same tokens."""
    if precision != "fp32":
        pytest.skip(f"{precision} is compared on the real model (fp16) or by answer quality (int8/int4)")
    if precision not in backend_info.capabilities.exact_precisions:
        pytest.skip("fp32 is not declared exact (capabilities.exact_precisions)")
    _assert_same_greedy_tokens(pool.get(tiny_phi3, backend_name, precision, device), pool.get(tiny_phi3, REFERENCE, "fp32"))


@pytest.mark.real_model
def test_greedy_tokens_match_reference_on_real_model(pool, smollm2, backend_name, precision, device, backend_info):
    """Other exact precisions (fp16) on the trained SmolLM2, whose margins fp16 keeps: a random
    model's near-ties flip under fp16 rounding (measured: DirectML fp16 diverged at token 2-14)."""
    if precision == "fp32":
        pytest.skip("fp32 is compared on the tiny Phi-3 (test_greedy_tokens_match_reference)")
    if precision not in backend_info.capabilities.exact_precisions:
        pytest.skip(f"{precision} is not declared exact; checked by answer quality")
    _assert_same_greedy_tokens(pool.get(smollm2, backend_name, precision, device), pool.get(smollm2, REFERENCE, "fp32"))


@pytest.mark.real_model
def test_first_answer_token_matches_reference(pool, smollm2, backend_name, precision, device):
    model = pool.get(smollm2, backend_name, precision, device)
    reference = pool.get(smollm2, REFERENCE, "fp32")
    agreed = 0
    for prompt in AGREEMENT_PROMPTS:
        _, want, _ = run_raw(reference, prompt, SYSTEM, max_new_tokens=1, ignore_eos=True)
        _, got, _ = run_raw(model, prompt, SYSTEM, max_new_tokens=1, ignore_eos=True)
        agreed += got[:1] == want[:1]
    need = len(AGREEMENT_PROMPTS) // 2
    assert agreed >= need, f"first answer token agrees with the reference on {agreed} of {len(AGREEMENT_PROMPTS)} prompts (need {need})"


@pytest.fixture(scope="session")
def reference_answers(pool, smollm2) -> dict[str, str]:
    reference = pool.get(smollm2, REFERENCE, "fp32")
    return {q: reference.complete(q, system=SYSTEM, max_new_tokens=ANSWER_TOKENS) for q, _ in QUESTIONS}


@pytest.mark.real_model
def test_lower_precision_keeps_answers(pool, smollm2, backend_name, precision, device, backend_info,
                                       reference_answers, keep_share):
    """int8/int4 keep the reference's right answers to short factual questions (greedy, the
    walkthrough's system prompt): wrong facts stated with confidence fail here."""
    if precision in backend_info.capabilities.exact_precisions:
        pytest.skip(f"{precision} is declared exact: compared token by token")
    model = pool.get(smollm2, backend_name, precision, device)
    asked = [(q, p) for q, p in QUESTIONS if re.search(p, reference_answers[q], re.IGNORECASE)]
    lost = [q for q, p in asked
            if not re.search(p, model.complete(q, system=SYSTEM, max_new_tokens=ANSWER_TOKENS), re.IGNORECASE)]
    kept, need = len(asked) - len(lost), keep_share(precision)
    assert kept >= need * len(asked), (f"{precision} keeps {kept} of the reference's {len(asked)} right answers "
                                       f"(need {need:.0%}); lost: {'; '.join(lost)}")


@pytest.mark.real_model
def test_real_model_answers_correctly(pool, smollm2, backend_name, precision, device, backend_info):
    model = pool.get(smollm2, backend_name, precision, device)
    # with the walkthrough's system prompt: without one, SmolLM2's first answer token is a near
    # tie ("The" leads "L" by 0.08 logits at fp32), which a sound int8 model may tip either way
    answer = model.complete("What is the capital of France?", system=SYSTEM, max_new_tokens=48)
    assert "Paris" in answer, f"SmolLM2 at {precision} on {backend_name} answered {answer!r}"
    if precision in backend_info.capabilities.exact_precisions:  # then it must end where the reference does
        assert model.usage.finish_reason == "stop", f"no end-of-sequence after the answer: {answer!r}"


# ------------------------------------------------------------------ generation behaviour


def test_max_new_tokens_is_exact(default_model):
    """The backend's own stream stops at max_new_tokens, and with ignore_eos produces exactly that many."""
    for limit in (1, 7):
        _, _, count = run_raw(default_model, "Tell me a story.", max_new_tokens=limit, ignore_eos=True)
        assert count == limit, f"asked for {limit} new tokens (ignore_eos), the backend produced {count}"


def test_core_enforces_stop_strings(default_model):
    full = default_model.complete("Tell me a story.", max_new_tokens=24, ignore_eos=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    if len(stop.strip()) < 2:
        pytest.skip("the greedy output has no usable stop string")
    text = default_model.complete("Tell me a story.", max_new_tokens=24, ignore_eos=True, stop=[stop])
    assert text == full[: full.find(stop)], "output with a stop string is not the text before it"
    assert default_model.usage.finish_reason == "stop"


def test_native_stop_strings_stop_the_runtime(default_model, backend_info):
    if not backend_info.capabilities.native_stop_strings:
        pytest.skip("capabilities do not claim native stop strings (the core enforces them)")
    full, _, count = run_raw(default_model, "Tell me a story.", max_new_tokens=32, ignore_eos=True)
    stop = full[len(full) // 3 : len(full) // 3 + 3]
    if len(stop.strip()) < 2 or count < 32:
        pytest.skip("the greedy output has no usable stop string")
    text, _, stopped_count = run_raw(default_model, "Tell me a story.", max_new_tokens=32, ignore_eos=True, stop=(stop,))
    assert stopped_count < count, f"claims native stop strings but generated all {count} tokens past {stop!r}"
    assert stop in text or text == full[: full.find(stop)], "stopped, but not at the stop string"


def test_streaming_equals_whole_text(default_model, pool, tiny_phi3):
    """Concatenated chunks equal the reference tokenizer's decoding of the same token ids."""
    if not default_model.capabilities.streaming:
        pytest.skip("capabilities do not claim streaming")
    text, ids, count = run_raw(default_model, "Count from one to ten.", max_new_tokens=20, ignore_eos=True)
    if not ids:
        pytest.skip("no token ids to decode")
    tokenizer = pool.get(tiny_phi3, REFERENCE, "fp32").loaded.runtime[1]
    assert text == tokenizer.decode(ids, skip_special_tokens=True)
    assert count == len(ids)


def test_seed_makes_sampling_repeatable(default_model, backend_info):
    caps = backend_info.capabilities
    if not (caps.sampling and caps.seed_determinism):
        pytest.skip("capabilities do not claim seeded sampling")
    settings = dict(max_new_tokens=16, ignore_eos=True, temperature=1.0)
    first = run_raw(default_model, "Tell me a story.", seed=11, **settings)[1:]
    again = run_raw(default_model, "Tell me a story.", seed=11, **settings)[1:]
    assert first == again, "the same seed gave different samples"
    greedy = run_raw(default_model, "Tell me a story.", max_new_tokens=16, ignore_eos=True)[1:]
    others = [run_raw(default_model, "Tell me a story.", seed=s, **settings)[1:] for s in (12, 13)]
    assert any(o != greedy for o in [first, *others]), "sampling at temperature 1 always equals greedy: not sampling"


def test_tokenize_matches_reference(default_model, pool, tiny_phi3):
    tokenizer = pool.get(tiny_phi3, REFERENCE, "fp32").loaded.runtime[1]
    for text in ("Hello world", "The capital of France is Paris.\n", "3.14 and 2024!", "<|user|>\nHi<|end|>\n"):
        assert default_model.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_prompt_longer_than_context_is_refused(default_model):
    limit = default_model.context_length
    if not limit:
        pytest.skip("the backend does not report a context length")
    with pytest.raises(PromptTooLongError):
        default_model.complete("hello " * (limit + 10), max_new_tokens=4)


def test_invalid_settings_are_refused(default_model):
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}):
        with pytest.raises(AipcError):
            default_model.complete("Hello", **bad)
