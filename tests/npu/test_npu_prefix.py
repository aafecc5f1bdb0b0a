"""Prefix reuse (issue 12) and the default engine. OpenVINO GenAI's NPU pipeline re-prefills the
whole prompt every call (its chat mode keeps no KV cache on NPU), so the backend does not claim
``prefix_cache`` and reports no reuse. NPUW's own prefix cache is opt-in through UPPERCASE options
(see the README); on the stand-in it must leave the greedy tokens as they are without it."""

from __future__ import annotations

import pytest

from aipc.types import GenerationConfig
from npu_support import needs_engine

pytestmark = needs_engine("openvino")
ENGINE = "openvino"
CHUNKED = {"PREFILL_HINT": "DYNAMIC", "NPUW_LLM_PREFILL_CHUNK_SIZE": "64", "MAX_PROMPT_LEN": "256"}
NPUW_PREFIX = {**CHUNKED, "NPUW_LLM_ENABLE_PREFIX_CACHING": "YES"}


def greedy(model, messages, tokens: int = 12) -> list[int]:
    chunks = model.raw_stream(model.format_chat(messages), GenerationConfig(max_new_tokens=tokens, ignore_eos=True))
    return [i for c in chunks for i in c.ids]


def test_no_prefix_cache_is_claimed_and_none_is_reported(npu_models):
    model = npu_models(ENGINE, "fp16")
    assert not model.capabilities.prefix_cache
    messages = [{"role": "user", "content": "Can you introduce yourself?"}]
    answer = "".join(model.chat(messages, max_new_tokens=8, ignore_eos=True))
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Count from one to ten."}]
    "".join(model.chat(messages, max_new_tokens=8, ignore_eos=True))
    assert model.usage.cached_tokens == 0


def test_npuw_prefix_caching_keeps_the_greedy_tokens(npu_models):
    """The opt-in: prompts that share 64-token blocks with earlier ones (a growing conversation,
    then a retry and an edit) give the ids of the same chunked pipeline without the cache."""
    plain, cached = npu_models(ENGINE, "fp16", **CHUNKED), npu_models(ENGINE, "fp16", **NPUW_PREFIX)
    messages = [{"role": "system", "content": "You are a helpful AI assistant. " * 8},
                {"role": "user", "content": "Can you introduce yourself?"}]
    for question in ("Count from one to ten.", "Tell me a story."):
        ids = greedy(cached, messages)
        assert ids == greedy(plain, messages)
        messages = [*messages, {"role": "assistant", "content": cached.loaded.runtime.decode(ids)},
                    {"role": "user", "content": question}]
    assert greedy(cached, messages) == greedy(plain, messages)
    edited = [messages[0], {"role": "user", "content": "What is the capital of France?"}]
    assert greedy(cached, edited) == greedy(plain, edited)
