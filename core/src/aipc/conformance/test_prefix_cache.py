"""Prefix reuse (``capabilities.prefix_cache``): a backend that keeps the KV state of earlier
prompts must give, for a prompt that continues one, the tokens a cold run of the whole prompt
gives, report the reuse truthfully, and never use state past the shared prefix.

Each check compares two loads of the same artifact: one keeping ``SLOTS`` states, one with
``cache_slots=0`` (no reuse, every prompt prefilled whole). Exact precisions must give the
same greedy tokens (fp32 on the tiny Phi-3, others on the real SmolLM2, as in test_backend); the
others must agree on the first answer token of at least ``AGREE`` of the conversation's turns.
"""

from __future__ import annotations

import pytest

from aipc.conformance.support import AGREEMENT_PROMPTS, SYSTEM, run_turn
from aipc.errors import PromptTooLongError
from aipc.types import GenerationConfig

SLOTS = 2
TOKENS = 12
AGREE = len(AGREEMENT_PROMPTS) - 2  # of 10 turns; a sound cache agrees with its own cold run on all


@pytest.fixture
def claimed(backend_info):
    if not backend_info.capabilities.prefix_cache:
        pytest.skip("capabilities do not claim prefix_cache")


def _pair(pool, tiny_phi3, smollm2, backend_name, precision, device):
    source = tiny_phi3 if precision == "fp32" else smollm2
    return (pool.get(source, backend_name, precision, device, cache_slots=SLOTS),
            pool.get(source, backend_name, precision, device, cache_slots=0))


def _exact(backend_info, precision):
    if precision not in backend_info.capabilities.exact_precisions:
        pytest.skip(f"{precision} is not declared exact: reuse is checked by agreement (test_prefix_reuse_agrees)")


def _turn(reuse, cold, messages, what):
    """One turn on both models: the same greedy ids, reuse reported by one, none by the other."""
    text, got, cached = run_turn(reuse, messages, max_new_tokens=TOKENS, ignore_eos=True)
    _, want, cold_cached = run_turn(cold, messages, max_new_tokens=TOKENS, ignore_eos=True)
    prompt = len(reuse.tokenize(reuse.format_chat(messages)))
    assert cold_cached == 0, f"cache_slots=0 must reuse nothing, but {cold_cached} tokens were reported reused"
    assert 0 <= cached < prompt, f"{what}: {cached} tokens reported reused of a {prompt}-token prompt"
    assert got == want, f"{what}: with {cached} reused tokens the greedy ids differ from a cold run: {got} vs {want}"
    return text, cached, prompt


def test_next_turn_reuses_and_matches_cold_run(claimed, pool, tiny_phi3, smollm2, backend_info, backend_name,
                                               precision, device):
    _exact(backend_info, precision)
    reuse, cold = _pair(pool, tiny_phi3, smollm2, backend_name, precision, device)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me a story."}]
    _turn(reuse, cold, messages, "turn 1")
    for turn, question in enumerate(("Why?", "Say it again, shorter."), start=2):
        text, _, _ = run_turn(reuse, messages, max_new_tokens=TOKENS, ignore_eos=True)  # the answer, kept
        messages = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": question}]
        before = len(reuse.tokenize(reuse.format_chat(messages[:-2])))
        _, cached, _ = _turn(reuse, cold, messages, f"turn {turn}")
        assert cached >= before - 1, (
            f"turn {turn}: the conversation so far ({before} tokens) was processed already, but only "
            f"{cached} tokens were reused")


def test_edited_conversation_reuses_only_the_common_prefix(claimed, pool, tiny_phi3, smollm2, backend_info,
                                                            backend_name, precision, device):
    """An earlier message edited, an answer regenerated: state past the first change is stale."""
    _exact(backend_info, precision)
    reuse, cold = _pair(pool, tiny_phi3, smollm2, backend_name, precision, device)
    first = [{"role": "user", "content": "Count from one to ten."}]
    answer, _, _ = _turn(reuse, cold, first, "first")
    later = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And back down."}]
    _turn(reuse, cold, later, "second turn")
    edited = [{"role": "user", "content": "Count from one to five."}, *later[1:]]
    old = reuse.tokenize(reuse.format_chat(later))
    new = reuse.tokenize(reuse.format_chat(edited))
    shared = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    _, cached, _ = _turn(reuse, cold, edited, "first message edited")
    assert cached <= shared, f"{cached} tokens reused, but the edited prompt shares only {shared} with the old one"
    _, cached, prompt = _turn(reuse, cold, edited, "the same prompt again (regenerated answer)")
    assert cached == prompt - 1 or cached >= shared, "regenerating the same prompt reused less than its prefix"


def test_interleaved_conversations_keep_their_state(claimed, pool, tiny_phi3, smollm2, backend_info,
                                                    backend_name, precision, device):
    """Two conversations taking turns on one model (SLOTS states): each stays right and reused."""
    _exact(backend_info, precision)
    reuse, cold = _pair(pool, tiny_phi3, smollm2, backend_name, precision, device)
    a = [{"role": "user", "content": "Tell me a story."}]
    b = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    answers = {}
    for name, messages in (("a", a), ("b", b)):
        answers[name], _, _ = _turn(reuse, cold, messages, f"conversation {name}, turn 1")
    for name, messages in (("a", a), ("b", b)):
        before = len(reuse.tokenize(reuse.format_chat(messages)))
        messages += [{"role": "assistant", "content": answers[name]}, {"role": "user", "content": "Go on."}]
        _, cached, _ = _turn(reuse, cold, messages, f"conversation {name}, turn 2")
        assert cached >= before - 1, (
            f"conversation {name}: its first prompt ({before} tokens) was reused only {cached} tokens deep: "
            f"the other conversation evicted it although {SLOTS} states are kept")


def test_state_after_a_closed_stream_is_usable(claimed, pool, tiny_phi3, smollm2, backend_info, backend_name,
                                              precision, device):
    """A generation stopped midway (client gone, Ctrl-C) leaves state the next prompt uses right."""
    _exact(backend_info, precision)
    reuse, cold = _pair(pool, tiny_phi3, smollm2, backend_name, precision, device)
    messages = [{"role": "user", "content": "Tell me a story."}]
    stream = reuse.raw_stream(reuse.format_chat(messages), GenerationConfig(max_new_tokens=64, ignore_eos=True))
    iterator = iter(stream)
    partial = [next(iterator).text for _ in range(3)]
    stream.close()
    messages += [{"role": "assistant", "content": "".join(partial)}, {"role": "user", "content": "Go on."}]
    _turn(reuse, cold, messages, "after a stream closed at its third chunk")
    _turn(reuse, cold, messages[:1], "the first prompt again")


@pytest.mark.real_model
def test_prefix_reuse_agrees(claimed, pool, smollm2, backend_info, backend_name, precision, device):
    """Every precision: a 10-turn conversation on SmolLM2, each turn's first answer token with
    reuse against a cold run of the same prompt."""
    if precision in backend_info.capabilities.exact_precisions:
        pytest.skip(f"{precision} is exact: checked token for token above")
    reuse = pool.get(smollm2, backend_name, precision, device, cache_slots=SLOTS)
    cold = pool.get(smollm2, backend_name, precision, device, cache_slots=0)
    messages, agreed, reused = [{"role": "system", "content": SYSTEM}], 0, 0
    for question in AGREEMENT_PROMPTS:
        messages.append({"role": "user", "content": question})
        text, got, cached = run_turn(reuse, messages, max_new_tokens=6, ignore_eos=True)
        _, want, _ = run_turn(cold, messages, max_new_tokens=1, ignore_eos=True)
        agreed += got[:1] == want[:1]
        reused += cached > 0
        messages.append({"role": "assistant", "content": text})
    assert reused >= len(AGREEMENT_PROMPTS) - 1, f"only {reused} of {len(AGREEMENT_PROMPTS)} turns reused any state"
    assert agreed >= AGREE, f"first answer token with reuse agrees with a cold run on {agreed} of {len(AGREEMENT_PROMPTS)} turns (need {AGREE})"


def test_context_limit_counts_reused_tokens(claimed, pool, tiny_phi3, backend_info, present_device):
    """A conversation grown past the context is refused as before, reused prefix or not."""
    device = backend_info.device(present_device)
    model = pool.get(tiny_phi3, backend_info.name, device.precisions[0], present_device, cache_slots=SLOTS)
    limit = model.context_length
    if not limit:
        pytest.skip("the backend does not report a context length")
    messages = [{"role": "user", "content": "Tell me a story."}]
    model.complete("Tell me a story.", max_new_tokens=4)
    messages += [{"role": "assistant", "content": "Once"}, {"role": "user", "content": "more " * (limit + 10)}]
    with pytest.raises(PromptTooLongError):
        "".join(model.chat(messages, max_new_tokens=4))


def test_no_reuse_is_reported_without_the_claim(backend_info, default_model):
    """A backend that claims no prefix cache reports no reused tokens."""
    if backend_info.capabilities.prefix_cache:
        pytest.skip("capabilities claim prefix_cache (checked above)")
    for _ in range(2):
        default_model.complete("Tell me a story.", max_new_tokens=3, ignore_eos=True)
        assert default_model.usage.cached_tokens == 0, "reports reused prompt tokens but does not claim prefix_cache"
