"""Fixtures of the OpenVINO backend's tests: real runtimes, real (tiny or small) models.

Artifacts land in aipc's cache (AIPC_HOME), so a second run of the suite (or the conformance
suite in the same tox env) reuses them; models are loaded once per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aipc_openvino", reason="aipc-openvino is not installed in this environment")

import aipc  # noqa: E402

BACKEND = "openvino"
#: Chat prompts for greedy comparisons with the reference backend.
PROMPTS = ("Can you introduce yourself?", "Count from one to ten.")


def run_python(code: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of this environment (to inspect sys.modules etc.)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_aipc(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real ``aipc`` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "aipc", *args], capture_output=True, text=True, timeout=timeout)


def last_json(text: str) -> dict:
    """The JSON object a command printed last on stdout."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.find("{"):])


@pytest.fixture(scope="session")
def tiny() -> Path:
    from aipc.testing import tiny_phi3_cached

    return tiny_phi3_cached()


@pytest.fixture(scope="session")
def artifacts(tiny):
    """``artifacts(precision)`` -> the tiny Phi-3's OpenVINO artifact folder (quantized once)."""
    made: dict[str, Path] = {}

    def get(precision: str) -> Path:
        if precision not in made:
            made[precision] = aipc.quantize(str(tiny), backend=BACKEND, precision=precision, device="CPU")
        return made[precision]

    return get


@pytest.fixture(scope="session")
def models(tiny):
    """``models(precision)`` -> the tiny Phi-3 loaded on OpenVINO/CPU (once per precision)."""
    loaded: dict[str, aipc.Model] = {}

    def get(precision: str) -> aipc.Model:
        if precision not in loaded:
            loaded[precision] = aipc.load(str(tiny), backend=BACKEND, precision=precision, device="CPU")
        return loaded[precision]

    return get


@pytest.fixture(scope="session")
def reference(tiny) -> aipc.Model:
    """The tiny Phi-3 on the reference backend (plain transformers, fp32)."""
    return aipc.load(str(tiny), backend="transformers", precision="fp32")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from aipc.sources import DEFAULT_MODEL, resolve

    try:
        return resolve(DEFAULT_MODEL).hf_dir
    except ImportError as error:  # the GGUF conversion module not there yet
        pytest.skip(f"SmolLM2 cannot be converted here: {error}")


@pytest.fixture(scope="session")
def stream_raw():
    """``stream_raw(model, prompt, system=None, **settings)``: the backend's own stream for a chat
    prompt, as (text, ids, token count)."""
    from aipc.conformance.support import run_raw

    return run_raw


@pytest.fixture(scope="session")
def python_run():
    return run_python


@pytest.fixture(scope="session")
def cli_run():
    return run_aipc
