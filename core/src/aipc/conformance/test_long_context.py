"""LongRoPE models (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) at full length, on every backend.

Tiny stand-ins built in the test run (:func:`aipc.testing.tiny_phi3_cached`, variants
``phi3-128k`` and ``phi4-mini``: original context 64, max 1024; Phi-4-mini's partial rotary, tied
embeddings, grouped KV heads and padded vocabulary). Three prompt kinds, 16 greedy tokens each:

- short (13 tokens) and long (215 tokens, past the original context: every position rotated with
  the long factors): the backend accepts both and, at an exact precision (fp32), gives the
  reference's tokens. A backend that caps a LongRoPE model at its original context, or that
  exports or runs it with the wrong factors, fails here.
- crossing (59 tokens, the answer crosses position 64): all 16 tokens come out (none cut to fit
  the original context) and, at fp32, they are the reference's. A backend claiming
  ``longrope_reencode`` (all of aipc's) re-encodes the whole sequence (prompt and tokens so far)
  with the long factors when the sequence crosses the original context, as the model intends, and
  all 16 are compared; one keeping its KV cache across and rotating only the new tokens with the
  long factors (a documented approximation: 6 of 16 tokens agree on the tiny stand-ins, those
  before the crossing) does not claim it and is compared up to the crossing.
- a conversation through the crossing with prefix reuse on (where ``prefix_cache`` and
  ``longrope_reencode`` are claimed, at fp32): the re-encoded state and the reuse boundary together.

Each kind runs on a fresh model load: a kept prefix state of one kind must not leak into another
(see the suite's prefix-cache tests and :class:`aipc.prefix.PrefixCache`'s ``boundary``).
"""

from __future__ import annotations

import pytest

import aipc
from aipc.artifacts import eos_token_ids
from aipc.conformance.support import REFERENCE, run_raw, run_turn
from aipc.errors import UnsupportedArchitectureError
from aipc.testing import LONGROPE_ORIGINAL, VARIANTS, prompt_of_length, tiny_phi3_cached

NEW = 16
KINDS = {"short": 13, "long": 215, "crossing": 59}


@pytest.fixture(scope="session", params=[v for v in VARIANTS if v != "phi3"])
def longrope(request):
    return tiny_phi3_cached(0, request.param)


def _load(folder, backend: str, precision: str, device: str | None, cache_slots: int = 0) -> aipc.Model:
    try:
        return aipc.load(str(folder), backend=backend, precision=precision, device=device, cache_slots=cache_slots)
    except UnsupportedArchitectureError as error:  # refused before any work, with the reason: allowed
        pytest.skip(f"the backend refuses this architecture: {error}")


def _until_an_end(folder, got: list[int], want: list[int]) -> tuple[list[int], list[int]]:
    """Both cut before the first end token ``got`` has: plugin API 1.0 let ignore_eos pick and pass it."""
    ends = eos_token_ids(folder)
    keep = min([NEW] + [i for i, t in enumerate(got) if t in ends])
    return got[:keep], want[:keep]


def _answer(folder, backend: str, precision: str, device: str | None, prompt_tokens: int):
    model = _load(folder, backend, precision, device)
    try:
        prompt = prompt_of_length(model, prompt_tokens)
        _, ids, count = run_raw(model, prompt, max_new_tokens=NEW, ignore_eos=True)
        return len(model.tokenize(model.format_prompt(prompt))), ids, count
    finally:
        model.close()


@pytest.mark.parametrize("kind", list(KINDS))
def test_longrope_prompts(longrope, backend_name, precision, device, backend_info, kind):
    _, got, count = _answer(longrope, backend_name, precision, device, KINDS[kind])
    assert count >= NEW, f"{kind} prompt: {count} tokens instead of {NEW} (was the answer cut to the original context?)"
    got = got[:NEW]  # exactness of the count is test_max_new_tokens_is_exact's business
    if precision not in backend_info.capabilities.exact_precisions or precision != "fp32":
        return  # accepted at full length; exact tokens are compared at fp32 (as the rest of the suite does)
    length, want, _ = _answer(longrope, REFERENCE, "fp32", None, KINDS[kind])
    if kind == "crossing":
        assert length < LONGROPE_ORIGINAL < length + NEW, f"the crossing prompt has {length} tokens"
        if not backend_info.capabilities.longrope_reencode:  # the approximation: up to the crossing
            got, want = got[:LONGROPE_ORIGINAL - length + 1], want[:LONGROPE_ORIGINAL - length + 1]
    got, want = _until_an_end(longrope, got, want)
    assert got == want, f"{kind} prompt on {longrope.name}: tokens differ from the reference: {got} vs {want}"


def test_a_conversation_through_the_crossing(longrope, backend_name, precision, device, backend_info):
    """Prefix reuse on, a conversation growing past the original context (prompts of 26 tokens; 55,
    continuing the first turn's state, whose answer crosses 64; 84; 113, continuing the third's): each
    turn gives the reference's tokens, so a kept state is never continued across the boundary and a
    crossing re-encoded on a continued state leaves a consistent one. The answers in the history are
    a fixed text (a random model's text can hold any character, a NUL too)."""
    claims = backend_info.capabilities
    if not (claims.prefix_cache and claims.longrope_reencode) or precision != "fp32" or \
            precision not in claims.exact_precisions:
        pytest.skip("checked where prefix_cache and longrope_reencode are claimed, at fp32 declared exact")
    model = _load(longrope, backend_name, precision, device, cache_slots=1)
    reference = _load(longrope, REFERENCE, "fp32", None)
    try:
        messages = [{"role": "user", "content": prompt_of_length(model, 26)}]
        for turn in range(4):
            _, got, reused = run_turn(model, messages, max_new_tokens=NEW, ignore_eos=True)
            got, want = _until_an_end(longrope, got, run_turn(reference, messages, max_new_tokens=NEW, ignore_eos=True)[1])
            assert got == want, f"turn {turn} ({reused} tokens reused): tokens differ from the reference: {got} vs {want}"
            messages += [{"role": "assistant", "content": "robots count boats near the quiet sea every morning"},
                         {"role": "user", "content": "one two three"}]
    finally:
        model.close()
        reference.close()
