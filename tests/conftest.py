"""Shared fixtures of the project's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_phi3() -> Path:
    from aipc.testing import tiny_phi3_cached

    return tiny_phi3_cached()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from aipc.sources import DEFAULT_MODEL, resolve

    return resolve(DEFAULT_MODEL).hf_dir


def run_aipc(*args: str, env: dict | None = None, timeout: float = 600, input: str | None = None):
    """Run the real ``aipc`` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "aipc", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, input=input)


@pytest.fixture(scope="session")
def aipc_cli():
    """``aipc_cli(*args, env=..., input=...)`` runs the real command line in a subprocess."""
    return run_aipc
