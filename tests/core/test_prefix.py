"""aipc.prefix: which kept state a prompt continues, and how far."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aipc.errors import InvalidConfigError
from aipc.prefix import PrefixCache, cache_slots, common_prefix


def turn(cache: PrefixCache, prompt: list[int], answer: list[int], name: str) -> int:
    """Take a slot as a backend does, then record prompt + answer (all but the last token fed)."""
    slot, reuse = cache.take(prompt)
    assert reuse == 0 or slot.state is not None
    slot.hold(name, (prompt + answer)[:-1])
    return reuse


def test_next_turn_continues_its_own_conversation():
    cache = PrefixCache(1)
    assert turn(cache, [1, 2, 3], [7, 8, 9], "a") == 0
    assert turn(cache, [1, 2, 3, 7, 8, 9, 4], [5, 6], "a") == 5  # the state holds 1 2 3 7 8


def test_at_least_one_token_is_left_to_prefill():
    cache = PrefixCache(1)
    turn(cache, [1, 2, 3], [4, 5], "a")
    slot, reuse = cache.take([1, 2, 3])  # the same prompt again: a regenerated answer
    assert reuse == 2 and slot.state == "a"


def test_an_edited_message_reuses_only_the_common_prefix():
    cache = PrefixCache(1)
    turn(cache, [1, 2, 3, 4, 5, 6], [7, 8], "a")
    assert turn(cache, [1, 2, 9, 4, 5, 6, 7], [8], "a") == 2


def test_two_conversations_taking_turns_keep_their_slots():
    cache = PrefixCache(2)
    system = [1, 2, 3, 4]  # both share a system prompt
    turn(cache, system + [10, 11], [20, 21], "a")
    assert turn(cache, system + [12, 13], [22, 23], "b") == 0, "b took a's slot while one was free"
    assert turn(cache, system + [10, 11, 20, 21, 14], [24], "a") == 7  # 21 was never fed
    assert turn(cache, system + [12, 13, 22, 23, 15], [25], "b") == 7


def test_least_recently_used_is_evicted():
    cache = PrefixCache(2)
    turn(cache, [1, 10], [20, 21], "a")
    turn(cache, [2, 11], [22, 23], "b")
    turn(cache, [1, 10, 20, 21], [5], "a")  # a used last: b is the oldest
    turn(cache, [3, 12], [24, 25], "c")
    assert {s.state for s in cache.slots} == {"a", "c"}


def test_no_slots_means_no_reuse():
    cache = PrefixCache(0)
    for _ in range(3):
        slot, reuse = cache.take([1, 2, 3])
        assert reuse == 0 and slot.state is None
        slot.hold("x", [1, 2])
    assert not cache.enabled


@given(st.lists(st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=12),
                          st.lists(st.integers(0, 3), min_size=1, max_size=4)), max_size=12),
       st.integers(0, 3))
def test_reuse_never_passes_what_a_slot_shares(turns, slots):
    cache = PrefixCache(slots)
    for prompt, answer in turns:
        held = {id(s): list(s.ids) for s in cache.slots}
        slot, reuse = cache.take(prompt)
        assert 0 <= reuse <= len(prompt) - 1
        if reuse:
            assert reuse <= common_prefix(held[id(slot)], prompt)
        slot.hold("s", (prompt + answer)[:-1])


def test_cache_slots_setting(monkeypatch):
    monkeypatch.delenv("AIPC_CACHE_SLOTS", raising=False)
    assert cache_slots() == 1 and cache_slots(0) == 0 and cache_slots("3") == 3
    monkeypatch.setenv("AIPC_CACHE_SLOTS", "0")
    assert cache_slots() == 0
    for bad in ("-1", "many"):
        with pytest.raises(InvalidConfigError):
            cache_slots(bad)
