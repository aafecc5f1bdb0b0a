"""Prefix reuse (issue 12) on the real SmolLM2: LLMPipeline's chat mode fed token ids keeps the
KV cache of the last prompt and answer, and a next turn prefills only its new tokens.

Every check compares against a cold run of the same full prompt on the same artifact with reuse
off (``cache_slots=0``): greedy ids must be equal (fp16 is one of the backend's exact
precisions), and the reuse reported in ``cached_tokens`` must be what really happened.
"""

from __future__ import annotations

import pytest

import aipc
from aipc.types import GenerationConfig

TOKENS = 24
FIRST = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def pair(smollm2):
    """(reuse on, reuse off): the same SmolLM2 fp16 artifact loaded twice."""
    warm = aipc.load(str(smollm2), backend="openvino", precision="fp16", device="CPU", cache_slots=1)
    cold = aipc.load(str(smollm2), backend="openvino", precision="fp16", device="CPU", cache_slots=0)
    return warm, cold


def greedy(model: aipc.Model, messages, tokens: int = TOKENS, **settings) -> tuple[list[int], str, int]:
    """The backend's greedy ids and text for a chat, and the prompt tokens it said it reused."""
    model.loaded.cached_tokens = -1  # a backend must set it on every call
    config = GenerationConfig(max_new_tokens=tokens, **settings)
    chunks = list(model.raw_stream(model.format_chat(messages), config))
    return [i for c in chunks for i in c.ids], "".join(c.text for c in chunks), model.loaded.cached_tokens


def turn(messages, answer: str, question: str):
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": question}]


def test_declares_the_capability(pair):
    warm, cold = pair
    assert warm.capabilities.prefix_cache
    assert (warm.loaded.extra["cache_slots"], cold.loaded.extra["cache_slots"]) == (1, 0)


def test_next_turns_prefill_only_what_is_new_and_equal_a_cold_run(pair):
    warm, cold = pair
    messages = FIRST
    ids, text, cached = greedy(warm, messages)
    assert cached == 0, "a first turn has nothing to reuse"
    assert "Paris" in text
    for question in ("And of Germany?", "Which of the two is bigger?"):
        held = len(warm.tokenize(warm.format_chat(messages))) + len(ids)  # prompt + answer ids
        messages = turn(messages, text, question)
        prompt = warm.format_chat(messages)
        ids, text, cached = greedy(warm, messages)
        want, _, cold_cached = greedy(cold, messages)
        assert ids == want, f"reused state changed the greedy tokens at {messages[-1]}"
        assert cold_cached == 0
        # all of the last prompt and answer except the answer's final token (sampled, never fed)
        assert cached == held - 1, (cached, held)
        assert 0 < cached < len(warm.tokenize(prompt))
        assert warm.loaded.extra["perf"]["input_tokens"] == len(warm.tokenize(prompt)) - cached


def test_the_core_reports_the_reuse(pair):
    warm, cold = pair
    first = [{"role": "user", "content": "What is the capital of Italy?"}]
    answer = "".join(warm.chat(first, max_new_tokens=TOKENS))
    before = warm.usage.prompt_tokens
    assert warm.usage.cached_tokens < before  # at most the template's start, shared with earlier chats
    follow = turn(first, answer, "And how many people live there?")
    "".join(warm.chat(follow, max_new_tokens=TOKENS))
    assert before <= warm.usage.cached_tokens < warm.usage.prompt_tokens
    "".join(cold.chat(follow, max_new_tokens=TOKENS))
    assert cold.usage.cached_tokens == 0


def test_an_edited_conversation_never_reuses_stale_state(pair):
    warm, cold = pair
    _, answer, _ = greedy(warm, FIRST)
    later = turn(FIRST, answer, "And of Spain?")
    greedy(warm, later)
    edited = turn([{"role": "user", "content": "What is the capital of Japan?"}], answer, "And of Spain?")
    old, new = warm.tokenize(warm.format_chat(later)), warm.tokenize(warm.format_chat(edited))
    shared = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
    ids, _, cached = greedy(warm, edited)
    assert ids == greedy(cold, edited)[0]
    assert 0 < cached <= shared  # the system prompt and the start of the first message, no further
    # the same prompt again (a regenerated answer): all of it but the last token, fed again
    ids, _, cached = greedy(warm, edited)
    assert ids == greedy(cold, edited)[0]
    assert cached == len(new) - 1


def test_interleaved_conversations_each_stay_correct(pair):
    warm, cold = pair
    other = [{"role": "user", "content": "Name three colours."}]
    _, answer_a, _ = greedy(warm, FIRST)
    _, answer_b, _ = greedy(warm, other)
    for messages in (turn(FIRST, answer_a, "And of Portugal?"), turn(other, answer_b, "And three fruits?")):
        ids, _, cached = greedy(warm, messages)
        assert ids == greedy(cold, messages)[0]
        assert cached > 0  # at least the template's system prompt, which both share


@pytest.mark.parametrize("stop_after", [1, 5])
def test_a_stream_closed_midway_leaves_usable_state(pair, stop_after):
    warm, cold = pair
    _, answer, _ = greedy(warm, FIRST)
    messages = turn(FIRST, answer, "Tell me a long story about it.")
    stream = warm.raw_stream(warm.format_chat(messages), GenerationConfig(max_new_tokens=200, ignore_eos=True))
    for _ in range(stop_after):
        next(stream)
    stream.close()
    # the next turn carries a longer answer that begins with every token the cancelled run made:
    # the state must not pass for holding the cancelled prompt and its tokens
    _, longer, _ = greedy(cold, messages, tokens=40, ignore_eos=True)
    follow = turn(messages, longer, "Shorter, please.")
    ids, text, _ = greedy(warm, follow)
    assert ids == greedy(cold, follow)[0]
    again = turn(follow, text, "Thanks.")
    ids, _, cached = greedy(warm, again)
    assert ids == greedy(cold, again)[0]
    assert cached > 0
    # a retry of the same prompt after a cancel
    stream = warm.raw_stream(warm.format_chat(again), GenerationConfig(max_new_tokens=200, ignore_eos=True))
    next(stream)
    stream.close()
    assert greedy(warm, again)[0] == greedy(cold, again)[0]


def test_stop_strings_and_sampling_keep_state_consistent(pair):
    warm, cold = pair
    # the runtime stops at the stop string itself; the next prompt holds only the text before it
    text = "".join(warm.chat(FIRST, max_new_tokens=TOKENS, stop=["France"]))
    follow = turn(FIRST, text, "Say it again.")
    assert greedy(warm, follow)[0] == greedy(cold, follow)[0]
    sampled = "".join(warm.chat(follow, max_new_tokens=8, temperature=0.8, seed=3))
    again = turn(follow, sampled, "Thanks.")
    assert greedy(warm, again)[0] == greedy(cold, again)[0]
