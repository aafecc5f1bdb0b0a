"""The reference backend on LongRoPE models (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini): the tiny
stand-ins (original context 64, max 1024) against transformers recomputing the whole sequence at
each step (aipc.testing.recomputed_greedy: the model's intent), greedy, 16 tokens.

Measured before the fix: a generation crossing position 64 agreed for 6 of 16 tokens (transformers
drops the KV cache at the crossing and its generation loop then feeds only the last token), and a
long prompt after a short one agreed for 0 (prefix reuse kept KV entries rotated with the short
factors).
"""

from __future__ import annotations

import pytest

import aipc
from aipc.conformance.support import run_raw, run_turn
from aipc.testing import LONGROPE_MAX, prompt_of_length, recomputed_greedy, tiny_phi3_cached

NEW = 16


@pytest.fixture(scope="module", params=["phi3-128k", "phi4-mini"])
def longrope(request):
    folder = tiny_phi3_cached(0, request.param)
    model = aipc.load(str(folder), backend="transformers", precision="fp32", cache_slots=1)
    yield folder, model
    model.close()


def agreeing(got: list[int], want: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


@pytest.mark.parametrize("tokens", [13, 215, 59], ids=["short", "long", "crossing"])
def test_greedy_tokens_follow_the_models_intent(longrope, tokens):
    folder, model = longrope
    prompt = prompt_of_length(model, tokens)
    want = recomputed_greedy(folder, model.tokenize(model.format_prompt(prompt)), NEW)
    _, got, _ = run_raw(model, prompt, max_new_tokens=NEW, ignore_eos=True)
    assert agreeing(got, want) == NEW, f"{tokens}-token prompt: {agreeing(got, want)} of {NEW} tokens agree"


def test_reuse_never_mixes_short_and_long_factors(longrope):
    """A conversation growing past the original context: each turn reuses what it may and agrees."""
    folder, model = longrope
    messages = [{"role": "user", "content": prompt_of_length(model, 30)}]
    for turn in range(4):  # ~40 tokens; crossing 64 (re-encoded) in one of the next; then past it (reused again)
        prompt = model.format_chat(messages)
        want = recomputed_greedy(folder, model.tokenize(prompt), NEW)
        text, got, reused = run_turn(model, messages, max_new_tokens=NEW, ignore_eos=True)
        assert agreeing(got, want) == NEW, f"turn {turn}: {agreeing(got, want)} of {NEW} agree ({reused} reused)"
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "one two three"}]
    assert reused > 0, "the last turn, past the crossing on both sides, should reuse the kept state"


def test_the_context_is_the_long_one(longrope):
    assert longrope[1].context_length == LONGROPE_MAX

