"""Every hook is documented where plugin authors read, and exercised by the conformance suite."""

import inspect
from pathlib import Path

import pytest

from aipc import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("aipc_")]
SUITE_OR_CORE = {"aipc_detect_artifact": "runtime.py", "aipc_register_commands": "cli.py"}


def test_there_are_hooks_for_quantize_load_generate():
    assert {"aipc_quantize", "aipc_load", "aipc_generate", "aipc_backend_info"} <= set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert "Called" in doc, f"{name}'s docstring does not say when it is called"
    assert f"`{name}" in (ROOT / "docs" / "writing-a-backend.md").read_text(), f"{name} missing from the author guide"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_called_by_the_core(name):
    """A hook nothing calls is dead contract."""
    src = ROOT / "core" / "src" / "aipc"
    where = SUITE_OR_CORE.get(name, "runtime.py")
    assert name in (src / where).read_text() or name in (src / "plugins.py").read_text()
