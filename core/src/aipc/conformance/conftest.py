"""Fixtures of the conformance suite: test models, loaded models (cached per session) and the
reference backend's answers to compare with."""

from __future__ import annotations

from pathlib import Path

import pytest

from aipc.conformance.support import REFERENCE, ModelPool
from aipc.plugins import registry
from aipc.types import PRECISIONS


@pytest.fixture(scope="session")
def tiny_phi3() -> Path:
    from aipc.testing import tiny_phi3_cached

    return tiny_phi3_cached()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from aipc.sources import DEFAULT_MODEL, resolve

    return resolve(DEFAULT_MODEL).hf_dir


@pytest.fixture(scope="session")
def pool() -> ModelPool:
    if REFERENCE not in registry().backends:  # the suite always needs the reference
        from aipc.backends import reference

        registry().register(reference, REFERENCE)
    return ModelPool()


@pytest.fixture(scope="session")
def keep_share(request):
    """The share of the reference's right answers each lower precision must keep: the suite's
    floor, raised per precision by ``--aipc-keep PRECISION=SHARE``."""
    from aipc.conformance.test_backend import KEEP_FLOOR

    shares = {}
    for item in request.config.getoption("aipc_keep", default=[]) or []:
        precision, _, share = item.partition("=")
        try:
            shares[precision.strip()] = float(share)
        except ValueError:
            raise pytest.UsageError(f"--aipc-keep wants PRECISION=SHARE (e.g. int4=0.9), got {item!r}") from None
    return lambda precision: max(KEEP_FLOOR, shares.get(precision, KEEP_FLOOR))


@pytest.fixture(scope="session")
def backend_info(backend_name):
    backend = registry().backends.get(backend_name)
    if backend is None:
        pytest.fail(f"backend {backend_name!r} is not installed (installed: {', '.join(sorted(registry().backends))})")
    if not backend.ok:
        pytest.fail(f"backend {backend_name!r} is broken: {backend.error}")
    return backend.info


@pytest.fixture(scope="session")
def present_device(backend_info) -> str:
    device = backend_info.default_device()
    if device is None:
        pytest.skip(f"{backend_info.name} has no device present here")
    return device.name


@pytest.fixture(scope="session")
def default_model(pool, tiny_phi3, backend_info, present_device):
    """The backend's model of choice for behaviour checks: tiny Phi-3 at its widest precision."""
    device = backend_info.device(present_device)
    widest = min(device.precisions, key=lambda p: PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS))
    return pool.get(tiny_phi3, backend_info.name, widest, present_device)
