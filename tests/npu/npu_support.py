"""Helpers of the NPU backend's tests (imported by the test modules as ``npu_support``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import aipc
from aipc_npu import devices

BACKEND = "npu"
EMU = devices.EMULATED
#: chat prompts for greedy comparisons (the conformance suite's)
PROMPTS = ("Can you introduce yourself?", "What is the capital of France?", "Count from one to ten.", "Tell me a story.")


def needs_engine(engine: str):
    """Skip unless the engine can quantize and run here (the openvino engine also needs its
    export stack, the ``export`` extra: the library's environment has only its runtime)."""
    present, reason = devices.runtime(engine)
    if present and engine == "openvino":
        missing = [name for name in ("optimum", "nncf") if devices.package_dir(name) is None]
        if missing:
            present, reason = False, f"{', '.join(missing)} not installed (aipc-npu[export])"
    return pytest.mark.skipif(not present, reason=f"the {engine} engine is not installed here: {reason}")


def run_python(code: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def raw(model: aipc.Model, prompt: str, **settings) -> tuple[str, list[int], int]:
    """The backend's own stream for a chat prompt: (text, ids, token count)."""
    from aipc.types import GenerationConfig

    chunks = list(model.raw_stream(model.format_prompt(prompt), GenerationConfig(**settings)))
    return "".join(c.text for c in chunks), [i for c in chunks for i in c.ids], sum(c.tokens for c in chunks)


def default_engine() -> str:
    from aipc_npu.options import engine

    return engine({})


def agreement(got: list[int], want: list[int]) -> int:
    """How many leading tokens agree."""
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
