"""Prefix reuse on the directml backend (CPU provider): a generator kept per slot is rewound to
the prompt's common prefix (``rewind_to``) and given only the rest (``append_tokens``).

Every check compares a model keeping slots with a load of the same artifact at ``cache_slots=0``
(each prompt prefilled whole by a new generator): the greedy ids must be equal and the reuse
reported (``LoadedModel.cached_tokens``) must be what the conversations share.
"""

from __future__ import annotations

import pytest

import aipc
from aipc.prefix import common_prefix
from aipc.types import GenerationConfig

from directml_support import BACKEND, SYSTEM

TOKENS = 10


@pytest.fixture(scope="session", params=["fp32-tiny", "int4-smollm2"])
def folder(request, artifacts, smollm2_int4_dir):
    """The tiny Phi-3 at fp32 (an exact precision) and the real SmolLM2 at int4 (fp32 activations:
    see conftest.EXACT_REUSE)."""
    return artifacts("fp32", "CPU") if request.param == "fp32-tiny" else smollm2_int4_dir


def _load(folder, slots):
    return aipc.load(str(folder), backend=BACKEND, device="CPU", options={"threads": "1"}, cache_slots=slots)


@pytest.fixture(scope="session")
def cold(folder):
    return _load(folder, 0)


@pytest.fixture
def pair(folder, cold):
    """(a fresh load keeping 2 slots, the same artifact with cache_slots=0)."""
    return _load(folder, 2), cold


def turn(model, messages, **settings):
    """The backend's stream for a conversation: (text, ids, prompt tokens reported reused)."""
    model.loaded.cached_tokens = -1  # the backend must set it on every call
    settings = {"max_new_tokens": TOKENS, "ignore_eos": True, **settings}
    chunks = list(model.raw_stream(model.format_chat(messages), GenerationConfig(**settings)))
    return "".join(c.text for c in chunks), [i for c in chunks for i in c.ids], model.loaded.cached_tokens


def prompt_ids(model, messages):
    return model.tokenize(model.format_chat(messages))


def same_as_cold(warm, cold, messages, what):
    """One turn on both models: the same greedy ids; returns (text, ids, tokens reused)."""
    text, got, cached = turn(warm, messages)
    _, want, cold_cached = turn(cold, messages)
    assert cold_cached == 0, f"cache_slots=0 reported {cold_cached} reused tokens"
    assert got == want, f"{what}: {cached} tokens reused, ids {got} differ from a cold run's {want}"
    return text, got, cached


def start(text):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def test_next_turns_reuse_the_conversation_and_match_a_cold_run(pair):
    warm, cold = pair
    messages = start("Tell me a story about a cat.")
    text, ids, cached = same_as_cold(warm, cold, messages, "turn 1")
    assert cached == 0
    for question in ("Why?", "Say it again, shorter."):
        held = prompt_ids(warm, messages) + ids[:-1]  # what the state holds: all but the last sampled id
        messages = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": question}]
        text, ids, cached = same_as_cold(warm, cold, messages, f"turn {len(messages) // 2}")
        assert cached == common_prefix(held, prompt_ids(warm, messages)) > len(held) // 2


def test_an_edited_earlier_message_reuses_only_the_common_prefix(folder, cold):
    warm = _load(folder, 1)  # one slot: the edited conversation continues it (no free slot to take)
    first = start("Name three colours.")
    text, _, _ = same_as_cold(warm, cold, first, "first")
    second = first + [{"role": "assistant", "content": text}, {"role": "user", "content": "And three animals?"}]
    same_as_cold(warm, cold, second, "second")
    edited = start("Name three fruits.") + second[2:]
    _, _, cached = same_as_cold(warm, cold, edited, "edited")
    assert 0 < cached == common_prefix(prompt_ids(warm, second), prompt_ids(warm, edited))


def test_a_stream_closed_midway_leaves_usable_state(pair):
    warm, cold = pair
    messages = start("Count from one to twenty in words.")
    stream = warm.raw_stream(warm.format_chat(messages), GenerationConfig(max_new_tokens=TOKENS, ignore_eos=True))
    partial = [next(stream).ids[0] for _ in range(3)]
    stream.close()
    assert partial == turn(cold, messages)[1][:3]
    again_text, again, cached = turn(warm, messages)  # the same prompt: regenerated from the kept prefix
    assert again == turn(cold, messages)[1] and cached == len(prompt_ids(warm, messages)) - 1
    messages = messages + [{"role": "assistant", "content": again_text[:12]}, {"role": "user", "content": "Go on."}]
    _, _, cached = same_as_cold(warm, cold, messages, "after a closed stream")
    assert cached > 0


def test_two_interleaved_conversations_keep_their_own_state(pair):
    warm, cold = pair
    a, b = start("What is the capital of France?"), start("Write a haiku about rain, please.")
    texts = {}
    for name, messages in (("a", a), ("b", b)):
        texts[name], _, _ = same_as_cold(warm, cold, messages, f"{name} turn 1")
    a = a + [{"role": "assistant", "content": texts["a"]}, {"role": "user", "content": "And of Spain?"}]
    b = b + [{"role": "assistant", "content": texts["b"]}, {"role": "user", "content": "Another one."}]
    for name, messages in (("a", a), ("b", b)):
        _, _, cached = same_as_cold(warm, cold, messages, f"{name} turn 2")
        shared_system = len(prompt_ids(warm, start("")[:1]))
        assert cached > shared_system, f"{name} turn 2 reused only {cached} tokens: its own state was evicted"


def test_no_slots_reuse_nothing(pair):
    _, cold = pair
    messages = start("Hello!")
    for _ in range(2):
        assert turn(cold, messages)[2] == 0
    assert cold.loaded.runtime.slots.enabled is False


def test_sampling_with_a_seed_repeats_on_a_kept_conversation(pair):
    warm, _ = pair
    messages = start("Tell me a joke.")
    turn(warm, messages)  # a kept generator for this conversation
    sampled = dict(do_sample=True, temperature=1.0, top_k=50, top_p=1.0, seed=7)
    first, second = turn(warm, messages, **sampled), turn(warm, messages, **sampled)
    assert first[1] == second[1] and first[2] == second[2] == 0


def test_chat_reports_cached_tokens_in_usage(pair):
    warm, _ = pair
    messages = start("Say hi.")
    answer = "".join(warm.chat(messages, max_new_tokens=TOKENS))
    messages = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Again."}]
    "".join(warm.chat(messages, max_new_tokens=TOKENS))
    assert 0 < warm.usage.cached_tokens < warm.usage.prompt_tokens


def test_a_second_stream_while_one_runs_does_not_disturb_it(pair):
    warm, cold = pair
    messages = start("List five rivers.")
    turn(warm, messages)  # a kept generator for this conversation
    config = GenerationConfig(max_new_tokens=TOKENS, ignore_eos=True)
    first = warm.raw_stream(warm.format_chat(messages), config)
    ids = list(next(first).ids)
    second = turn(warm, messages)  # the same conversation's slot is busy: a generator of its own
    ids += [i for chunk in first for i in chunk.ids]
    want = turn(cold, messages)[1]
    assert ids == want and second[1] == want and second[2] == 0
    assert turn(warm, messages)[2] > 0  # the slot is still usable afterwards
