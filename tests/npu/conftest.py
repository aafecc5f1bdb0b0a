"""Fixtures of the NPU backend's tests.

Without an NPU the tests run the NPU code path on the CPU stand-in (device ``NPU-EMU``), which
``AIPC_NPU_EMULATE=1`` turns on; it is set here before the plugin registry is built (tox sets it
too, for the conformance suite). Tests that need a real NPU are marked ``real_npu`` and skipped,
with the probe's reason, when none is present.

Each engine's tests skip when that engine's runtime is not installed, so the same folder runs in
the default engine's environment and in the library engine's. Artifacts land in aipc's cache
(AIPC_HOME) and models are loaded once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("AIPC_NPU_EMULATE", "1")

pytest.importorskip("aipc_npu", reason="aipc-npu is not installed in this environment")

import aipc  # noqa: E402
from aipc_npu import devices  # noqa: E402

from npu_support import BACKEND, EMU, default_engine  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "real_npu: needs a real Intel NPU (skipped with the reason when absent)")


def pytest_collection_modifyitems(config, items):
    present, reason = devices.npu("openvino")
    if present:
        return
    skip = pytest.mark.skip(reason=f"needs a real NPU: {reason}")
    for item in items:
        if "real_npu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny() -> Path:
    from aipc.testing import tiny_phi3_cached

    return tiny_phi3_cached()


@pytest.fixture(scope="session")
def reference(tiny) -> aipc.Model:
    return aipc.load(str(tiny), backend="transformers", precision="fp32")


@pytest.fixture(scope="session")
def npu_models(tiny):
    """``npu_models(engine, precision, **options)`` -> the tiny Phi-3 on NPU-EMU, loaded once."""
    loaded: dict[tuple, aipc.Model] = {}

    def get(engine: str, precision: str, **options) -> aipc.Model:
        key = (engine, precision, tuple(sorted(options.items())))
        if key not in loaded:
            # name the engine only when it is not the default: the artifact cache key includes the
            # options given, and the conformance suite (no options) then reuses these artifacts
            if engine != default_engine():
                options = {"engine": engine, **options}
            loaded[key] = aipc.load(str(tiny), backend=BACKEND, precision=precision, device=EMU, options=options)
        return loaded[key]

    return get
