"""Finding backends: entry points of the ``aipc`` group, allow/block lists, broken plugins.

``AIPC_PLUGINS`` (comma-separated names; empty = none) allow-lists backends and
``AIPC_DISABLE_PLUGINS`` blocks them. A plugin that fails to import or to describe itself is
recorded with its error and the others keep working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import BackendUnavailableError, UnknownBackendError
from .types import BackendInfo

GROUP = "aipc"

#: Distributions of the aipc project itself. Their backends are the "built-ins": without a present
#: accelerator the default backend is one of them (see :meth:`Registry.default`).
FIRST_PARTY = frozenset({"aipc", "aipc-openvino", "aipc-directml", "aipc-npu"})


@dataclass
class Backend:
    """A registered backend: its description, or the error that kept it from loading."""

    name: str
    info: BackendInfo | None = None
    error: str = ""
    plugin: Any = None
    first_party: bool = False  # shipped by the aipc project (a FIRST_PARTY distribution)

    @property
    def ok(self) -> bool:
        return self.info is not None


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of distributions (``"not installed"`` where absent), read from package
    metadata without importing them: for ``BackendInfo.runtime_versions`` and manifests."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _names_from_env(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class Registry:
    """The plugin manager plus what aipc knows of each backend."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.backends: dict[str, Backend] = {}

    def load_entry_points(self) -> None:
        allowed = _names_from_env("AIPC_PLUGINS")
        blocked = _names_from_env("AIPC_DISABLE_PLUGINS") or set()
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in self.backends or ep.name in blocked:
                continue
            if allowed is not None and ep.name not in allowed:
                continue
            dist = getattr(ep, "dist", None)
            first_party = dist is not None and _canonical(dist.name) in FIRST_PARTY
            try:
                plugin = ep.load()
            except Exception as error:  # a broken plugin must not break the CLI
                self.backends[ep.name] = Backend(ep.name, error=f"import failed: {_one_line(error)}")
                continue
            self.register(plugin, ep.name, first_party)

    def register(self, plugin: Any, name: str, first_party: bool = False) -> Backend:
        """Register a plugin module or object as backend ``name`` and ask it to describe itself.
        ``first_party``: one of aipc's own backends (matters only for :meth:`default`)."""
        backend = Backend(name, plugin=plugin, first_party=first_party)
        self.backends[name] = backend
        try:
            self.pm.register(plugin, name=name)
        except Exception as error:
            backend.error = f"registration failed: {_one_line(error)}"
            return backend
        try:
            info = self._hook_for(name, "aipc_backend_info")()
            if not isinstance(info, BackendInfo):
                raise TypeError(f"aipc_backend_info returned {type(info).__name__}, not BackendInfo")
            if info.name != name:
                raise ValueError(f"describes itself as {info.name!r} but is registered as {name!r}")
            backend.info = info
        except Exception as error:
            backend.error = f"describe failed: {_one_line(error)}"
            self.pm.unregister(plugin)
        return backend

    def _hook_for(self, name: str, hook: str):
        """A hook caller that reaches only backend ``name``."""
        others = [p for n, p in self.pm.list_name_plugin() if n != name]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    def call(self, name: str, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` on backend ``name`` only."""
        return self._hook_for(name, hook)(**kwargs)

    def get(self, name: str) -> Backend:
        """The working backend ``name``, or a clear error."""
        backend = self.backends.get(name)
        if backend is None:
            known = ", ".join(sorted(self.backends)) or "none"
            raise UnknownBackendError(f"unknown backend {name!r} (installed: {known})")
        if not backend.ok:
            raise BackendUnavailableError(f"backend {name!r} is broken: {backend.error}")
        return backend

    def working(self) -> list[Backend]:
        return [b for b in self.backends.values() if b.ok]

    def default(self) -> Backend:
        """The backend used when the user names none, among the working ones with a present device:
        one with a present accelerator (NPU, GPU) if any, the highest priority first; else one of
        aipc's own backends on the CPU, by priority; a third-party CPU backend only when none of
        those can run. So a third-party plugin's priority counts for its accelerators and never
        silently puts it before the built-ins on the CPU."""

        def rank(backend: Backend) -> tuple[bool, bool, int]:
            device = backend.info.default_device()
            accelerated = device is not None and device.accelerator
            return (accelerated, accelerated or backend.first_party, backend.info.priority)

        candidates = [b for b in self.working() if b.info.present]
        if not candidates:
            raise BackendUnavailableError("no backend can run on this machine (see `aipc backends`)")
        return max(candidates, key=rank)


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    reg = Registry()
    reg.load_entry_points()
    return reg
