"""Helpers of the directml backend's tests (a plain module: conftest files are not importable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

BACKEND = "directml"
#: (precision, device) pairs buildable and runnable on this machine (no DirectML here).
RUNNABLE = (("fp32", "CPU"), ("int8", "CPU"), ("int4", "CPU"), ("fp16", "AUTO"), ("int4", "AUTO"))
SYSTEM = "You are a helpful AI assistant."


def run_python(code: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter of this environment (to inspect sys.modules etc.)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_aipc(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real ``aipc`` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "aipc", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def last_json(text: str) -> dict:
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.find("{"):])
