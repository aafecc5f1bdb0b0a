"""The backend itself, reached through its hooks without the core's checks in between.

The core refuses bad settings and over-long prompts before it calls a backend, and it stops
reading a stream at a stop string; so these tests call ``aipc_generate`` directly
(``Model.raw_stream``) to see what the backend does on its own:

- settings it does not claim (repetition_penalty, sampling, constraint kinds) are refused with
  InvalidConfigError, never silently ignored;
- a prompt over its own limit (the context length it reports, ``max_context``,
  ``max_prompt_tokens``) is refused with PromptTooLongError;
- closing the stream stops the runtime's work: measured as the time ``close()`` takes, the CPU
  time this process (and its child processes) spends in the second after it, and the time the
  next generation takes to start, against a generation long enough that a runtime still
  running would show in each;
- what the capabilities claim is what it does: sampling (top_k=1 is greedy; different seeds
  give different samples), repetition_penalty (changes a greedy answer), incremental streaming
  (chunks arrive as they are made, not all at the end), max_batch_size (that many generations at
  once each give the tokens of a run alone).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from aipc.conformance.support import run_raw
from aipc.constraints import Constraint
from aipc.errors import InvalidConfigError, PromptTooLongError
from aipc.types import GenerationConfig

STORY = "Tell me a story."


def _drain(model, prompt: str, config: GenerationConfig) -> None:
    for _ in model.raw_stream(prompt, config):
        pass


# ------------------------------------------------------------------ refusals by the backend


def test_backend_refuses_settings_it_does_not_claim(default_model, backend_info):
    caps = backend_info.capabilities
    if not caps.validates_inputs:
        pytest.skip("capabilities do not claim validates_inputs (the core refuses unclaimed settings before the backend)")
    prompt = default_model.format_prompt("Hello")
    cases = {}
    if not caps.repetition_penalty:
        cases["repetition_penalty=1.3"] = GenerationConfig(max_new_tokens=2, repetition_penalty=1.3)
    if not caps.sampling:
        cases["temperature=0.8"] = GenerationConfig(max_new_tokens=2, temperature=0.8)
    kinds = {"json_schema": Constraint.json_schema({"type": "object"}), "regex": Constraint("regex", "[a-z]+"),
             "grammar": Constraint("grammar", 'root ::= "yes" | "no"\n')}
    for kind, constraint in kinds.items():
        if kind not in caps.constraints:
            cases[f"a {kind} constraint"] = GenerationConfig(max_new_tokens=2, constraint=constraint)
    if not cases:
        pytest.skip("the capabilities claim every setting a GenerationConfig can carry")
    for name, config in cases.items():
        try:
            _drain(default_model, prompt, config)
        except InvalidConfigError:
            continue
        pytest.fail(f"{name}: not claimed by the capabilities, but generate neither honours it as claimed nor refuses it "
                    "(raise aipc.errors.InvalidConfigError)")


def test_backend_refuses_a_prompt_over_its_own_limit(default_model, backend_info):
    caps = backend_info.capabilities
    if not caps.validates_inputs:
        pytest.skip("capabilities do not claim validates_inputs (the core refuses long prompts before the backend)")
    limits = [n for n in (default_model.loaded.context_length, caps.max_context, caps.max_prompt_tokens) if n]
    if not limits:
        pytest.skip("the backend reports no context length and no prompt limit")
    limit = min(limits)
    prompt = "hello " * (limit + 16)
    assert len(default_model.tokenize(prompt)) > limit
    with pytest.raises(PromptTooLongError):
        _drain(default_model, prompt, GenerationConfig(max_new_tokens=1))


# ------------------------------------------------------------------ closing the stream


def _cpu_seconds() -> float:
    """CPU time of this process and its descendants (a runtime may work in a child process)."""
    total = time.process_time()
    if not sys.platform.startswith("linux"):
        return total
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    family = {os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    return total + sum(times[pid] for pid in family - {os.getpid()})


def _first_chunk_s(model, prompt: str, config: GenerationConfig) -> float:
    started = time.perf_counter()
    stream = model.raw_stream(prompt, config)
    try:
        next(iter(stream))
        return time.perf_counter() - started
    finally:
        getattr(stream, "close", lambda: None)()


SETTLE_S, WINDOW_S = 0.5, 1.0


def test_closing_the_stream_stops_the_runtime(default_model):
    """Close after two chunks of a generation that would run for seconds: ``close()`` returns
    promptly, the process is idle afterwards (no runtime still decoding in a background thread or
    worker process) and the next generation starts as fast as it does on an idle backend."""
    prompt = default_model.format_prompt(STORY)
    short = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    warm = GenerationConfig(max_new_tokens=32, ignore_eos=True)
    _drain(default_model, prompt, short)
    started, cpu = time.perf_counter(), _cpu_seconds()
    _drain(default_model, prompt, warm)
    working_s = time.perf_counter() - started
    per_token = working_s / warm.max_new_tokens
    # CPU seconds per second while generating, under whatever else this machine runs meanwhile
    working = (_cpu_seconds() - cpu) / working_s
    idle_first = min(_first_chunk_s(default_model, prompt, short) for _ in range(2))
    room = (default_model.context_length or 4096) - len(default_model.tokenize(prompt)) - 1
    config = GenerationConfig(max_new_tokens=room, ignore_eos=True)
    full_run_s = room * per_token  # what a runtime that ignores the close would go on computing
    stream = default_model.raw_stream(prompt, config)
    chunks = 0
    for _ in stream:
        chunks += 1
        if chunks == 2:
            break
    started = time.perf_counter()
    getattr(stream, "close", lambda: None)()  # a plain iterator has nothing to close; the core closes what it can
    close_s = time.perf_counter() - started
    time.sleep(SETTLE_S)  # thread pools may spin briefly after their last job
    before = _cpu_seconds()
    time.sleep(WINDOW_S)
    busy = _cpu_seconds() - before
    next_first = _first_chunk_s(default_model, prompt, short)
    context = f"(one token takes ~{per_token * 1000:.1f} ms; the closed generation of {room} tokens would run ~{full_run_s:.1f} s)"
    assert close_s < max(2.0, 50 * per_token), f"close() took {close_s:.2f} s {context}"
    assert busy < max(0.3 * working, 0.05) * WINDOW_S, (
        f"after close() the process kept computing: {busy:.2f} s of CPU in {WINDOW_S} s (generating: {working:.2f} s/s) {context}")
    assert next_first < max(2.0, 5 * idle_first), (
        f"the next generation's first chunk took {next_first:.2f} s (idle backend: {idle_first:.2f} s) {context}")
    # and the backend works right after a cancelled generation
    assert default_model.complete("Hello", max_new_tokens=3, ignore_eos=True) is not None
    assert default_model.usage.generated_tokens == 3


# ------------------------------------------------------------------ capability claims


def _ids(model, **settings) -> tuple:
    text, ids, _ = run_raw(model, STORY, **settings)
    return tuple(ids) or (text,)


def test_top_k_1_samples_the_greedy_tokens(default_model, backend_info):
    if not backend_info.capabilities.sampling:
        pytest.skip("capabilities do not claim sampling")
    greedy = _ids(default_model, max_new_tokens=12, ignore_eos=True)
    for seed in (1, 2):
        sampled = _ids(default_model, max_new_tokens=12, ignore_eos=True, temperature=1.5, top_k=1, seed=seed)
        assert sampled == greedy, f"top_k=1 at temperature 1.5 (seed {seed}) is not the greedy answer: top_k is not applied"


def test_sampling_varies_with_the_seed(default_model, backend_info):
    if not backend_info.capabilities.sampling:
        pytest.skip("capabilities do not claim sampling")
    samples = {_ids(default_model, max_new_tokens=12, ignore_eos=True, temperature=1.0, seed=seed) for seed in (1, 2, 3, 4)}
    assert len(samples) > 1, "four seeds at temperature 1 gave the same tokens: the backend does not sample"


def test_repetition_penalty_changes_the_answer(default_model, backend_info):
    if not backend_info.capabilities.repetition_penalty:
        pytest.skip("capabilities do not claim repetition_penalty")
    plain = _ids(default_model, max_new_tokens=64, ignore_eos=True)
    assert len(set(plain)) < len(plain), f"the greedy answer repeats no token; pick another prompt: {plain}"
    penalised = _ids(default_model, max_new_tokens=64, ignore_eos=True, repetition_penalty=5.0)
    assert penalised != plain, "repetition_penalty=5 left a repeating greedy answer unchanged: it is not applied"


def test_streaming_is_incremental(default_model, backend_info):
    if not backend_info.capabilities.streaming:
        pytest.skip("capabilities do not claim streaming")
    arrivals = []
    started = time.perf_counter()
    for _ in default_model.raw_stream(default_model.format_prompt(STORY), GenerationConfig(max_new_tokens=96, ignore_eos=True)):
        arrivals.append(time.perf_counter() - started)
    assert len(arrivals) > 1, "96 tokens came as one chunk"
    # A buffered stream hands out every chunk within a millisecond at the end; a streamed one spreads them
    # over the decoding. The prefill's share of the time varies (a static-shape NPU prefill is slow, a tiny
    # model's decoding fast), so only the spread is asked for, not an early first chunk.
    spread = arrivals[-1] - arrivals[0]
    assert spread > 0.1 * arrivals[-1], (
        f"the chunks came within {spread:.3f} s of each other, the last {arrivals[-1]:.2f} s after the start: "
        "not streamed as made")


def test_batch_of_generations_at_once(default_model, backend_info):
    batch = backend_info.capabilities.max_batch_size
    if batch < 2:
        pytest.skip("capabilities claim one generation at a time (max_batch_size 1)")
    prompts = [default_model.format_prompt(p) for p in ("Tell me a story.", "Count from one to ten.", "Hi")]
    prompts = (prompts * batch)[:batch]
    alone = [run_raw_text(default_model, p) for p in prompts]
    together: list = [None] * batch
    barrier = threading.Barrier(batch)

    def run(i: int) -> None:
        barrier.wait()
        together[i] = run_raw_text(default_model, prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(batch)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert together == alone, f"{batch} generations at once (max_batch_size) differ from each run alone"


def run_raw_text(model, prompt: str) -> tuple:
    chunks = list(model.raw_stream(prompt, GenerationConfig(max_new_tokens=24, ignore_eos=True)))
    return tuple(i for c in chunks for i in c.ids) or ("".join(c.text for c in chunks),)
