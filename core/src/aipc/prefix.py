"""Prefix reuse: keep the KV state of prompts a backend has processed, and find the one a new
prompt can continue.

A backend that claims ``Capabilities.prefix_cache`` keeps up to ``LoadRequest.cache_slots``
states (one per recent conversation), each with the token ids it holds. For a new prompt it
takes the state sharing the longest prefix with the prompt's ids, cuts that state back to the
common prefix (never stale tokens past it), and prefills only the rest; the least recently used
state is the one replaced when no state shares anything. This module is the runtime-free part
of that: which slot, how many tokens; the state itself is the runtime's (a transformers
``DynamicCache``, an onnxruntime-genai ``Generator``, ...).

    slots = PrefixCache(request.cache_slots)
    ...
    slot, reuse = slots.take(prompt_ids)       # in aipc_generate
    state = slot.state if reuse else new_state()
    crop(state, reuse); prefill(state, prompt_ids[reuse:])
    model.cached_tokens = reuse                # reported in Usage.cached_tokens
    ... generate, then record what the state now holds:
    slot.hold(state, prompt_ids + generated_ids_fed_to_the_model)
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import InvalidConfigError

#: slots a model keeps unless told otherwise (the CLI's one conversation; the server asks for more)
DEFAULT_SLOTS = 1


def cache_slots(value: int | str | None = None) -> int:
    """The number of slots: ``value``, else ``AIPC_CACHE_SLOTS``, else 1. 0 turns reuse off."""
    if value is None:
        value = os.environ.get("AIPC_CACHE_SLOTS", DEFAULT_SLOTS)
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InvalidConfigError(f"cache slots must be a whole number >= 0, got {value!r}") from None
    if number < 0:
        raise InvalidConfigError(f"cache slots must be a whole number >= 0, got {number}")
    return number


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Slot:
    """One kept state, the token ids it holds (what the model has seen, in order) and the length
    of the prompt that began it (the rest are generated tokens)."""

    state: Any = None
    ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    used: int = 0

    def hold(self, state: Any, ids: Sequence[int]) -> None:
        """Record the state after a generation and exactly the ids it now holds."""
        self.state, self.ids = state, [int(i) for i in ids]

    def clear(self) -> None:
        self.state, self.ids = None, []


def same_side(boundary: int, *lengths: int) -> bool:
    """Whether sequences of these lengths all fit in ``boundary`` tokens, or none does."""
    return len({n > boundary for n in lengths}) == 1


class PrefixCache:
    """Up to ``slots`` states, least recently used replaced first. ``slots=0``: no reuse."""

    def __init__(self, slots: int = DEFAULT_SLOTS, boundary: int | None = None) -> None:
        """``boundary``: a LongRoPE model's original context (:func:`aipc.artifacts.longrope_original`).
        Such a model rotates every position with its short factors while the sequence fits in it and
        with its long factors once it does not, so a state is reused only for a prompt on its side of
        the boundary, and never a state whose generation crossed it (its entries mix both, or were
        re-encoded with the long factors)."""
        self.slots = [Slot() for _ in range(max(int(slots), 0))]
        self.boundary = boundary
        self._clock = itertools.count(1)

    @property
    def enabled(self) -> bool:
        return bool(self.slots)

    def take(self, ids: Sequence[int]) -> tuple[Slot, int]:
        """The slot for a prompt of ``ids`` and how many of its leading ids that slot's state
        can stand for (the rest must be prefilled). At least one id is always left to prefill, so
        the model computes the logits of the next token.

        A slot whose whole earlier prompt this one repeats is this prompt's own conversation (a
        next turn, a regenerated answer): the one sharing most is taken. Otherwise an empty slot;
        else the slot sharing most, if that is at least half the prompt (an edited conversation);
        else the least recently used one, continued as far as it shares. So a new conversation that
        merely shares a system prompt does not evict another conversation's state. With no reuse (``slots=0``) the slot is a fresh one, never
        kept."""
        if not self.slots:
            return Slot(), 0
        shared = {id(s): common_prefix(s.ids, ids) if s.state is not None else 0 for s in self.slots}
        own = [s for s in self.slots if s.state is not None and shared[id(s)] >= s.prompt_tokens]
        empty = [s for s in self.slots if s.state is None]
        edited = [s for s in self.slots if 2 * shared[id(s)] >= len(ids)]
        if own:
            slot = max(own, key=lambda s: (shared[id(s)], s.used))
        elif empty:
            slot = empty[0]
        elif edited:
            slot = max(edited, key=lambda s: (shared[id(s)], -s.used))
        else:
            slot = min(self.slots, key=lambda s: s.used)
        reuse = min(shared[id(slot)], len(ids) - 1)
        if self.boundary and reuse > 0 and not same_side(self.boundary, len(ids), slot.prompt_tokens, len(slot.ids)):
            reuse = 0
        slot.used, slot.prompt_tokens = next(self._clock), len(ids)
        if reuse <= 0:
            reuse = 0
            slot.clear()  # nothing shared: this slot's old conversation is the one evicted
        return slot, reuse

    def clear(self) -> None:
        for slot in self.slots:
            slot.clear()
