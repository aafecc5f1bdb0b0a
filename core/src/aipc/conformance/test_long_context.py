"""LongRoPE models (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) at full length, on every backend.

Tiny stand-ins built in the test run (:func:`aipc.testing.tiny_phi3_cached`, variants
``phi3-128k`` and ``phi4-mini``: original context 64, max 1024; Phi-4-mini's partial rotary, tied
embeddings, grouped KV heads and padded vocabulary). Three prompt kinds, 16 greedy tokens each:

- short (13 tokens) and long (215 tokens, past the original context: every position rotated with
  the long factors): the backend accepts both and, at an exact precision (fp32), gives the
  reference's tokens. A backend that caps a LongRoPE model at its original context, or that
  exports or runs it with the wrong factors, fails here.
- crossing (59 tokens, the answer crosses position 64): all 16 tokens come out (none cut to fit
  the original context) and, at fp32, the tokens generated before the crossing are the
  reference's. Past the crossing the reference re-encodes the whole sequence with the long factors
  (the model's intent); the other backends rotate only the new tokens with them (measured on the
  tiny stand-ins: the 6 tokens before the crossing agree, the rest do not), which the backends'
  READMEs say.

Each kind runs on a fresh model load: a kept prefix state of one kind must not leak into another
(see the suite's prefix-cache tests and :class:`aipc.prefix.PrefixCache`'s ``boundary``).
"""

from __future__ import annotations

import pytest

import aipc
from aipc.artifacts import eos_token_ids
from aipc.conformance.support import REFERENCE, run_raw
from aipc.errors import UnsupportedArchitectureError
from aipc.testing import LONGROPE_ORIGINAL, VARIANTS, prompt_of_length, tiny_phi3_cached

NEW = 16
KINDS = {"short": 13, "long": 215, "crossing": 59}


@pytest.fixture(scope="session", params=[v for v in VARIANTS if v != "phi3"])
def longrope(request):
    return tiny_phi3_cached(0, request.param)


def _answer(folder, backend: str, precision: str, device: str | None, prompt_tokens: int):
    try:
        model = aipc.load(str(folder), backend=backend, precision=precision, device=device, cache_slots=0)
    except UnsupportedArchitectureError as error:  # refused before any work, with the reason: allowed
        pytest.skip(f"the backend refuses this architecture: {error}")
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
    keep = NEW
    if kind == "crossing":  # the reference re-encodes at the crossing: compare what comes before it
        keep = LONGROPE_ORIGINAL + 1 - length
    ends = eos_token_ids(longrope)  # up to an end token: plugin API 1.0 let ignore_eos pick and pass it
    keep = min([keep] + [i for i, t in enumerate(got[:keep]) if t in ends])
    got, want = got[:keep], want[:keep]
    assert got == want, f"{kind} prompt on {longrope.name}: tokens differ from the reference: {got} vs {want}"
