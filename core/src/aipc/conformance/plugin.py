"""pytest plugin (entry point ``pytest11``) behind the conformance suite.

    pytest --pyargs aipc.conformance --backend NAME [--aipc-report report.json]
    aipc conformance --backend NAME --json report.json

It parametrizes the suite's tests over the selected backends (default: every installed one)
and the precisions each declares on a present device, and writes a certification report.
Importing this module is cheap: pytest loads it in every session of an environment with aipc.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest

_results: list[dict] = []
_suite_ids: set[str] = set()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aipc", "aipc conformance suite")
    group.addoption("--backend", action="append", default=[], metavar="NAME",
                    help="aipc backend(s) to check (repeatable; default: every installed one).")
    group.addoption("--aipc-report", metavar="FILE", help="Write the aipc certification report (JSON) here.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_model: uses the real SmolLM2 (deselect with -m 'not real_model')")


def selected_backends(config: pytest.Config) -> list[str]:
    from aipc.plugins import registry

    names = config.getoption("backend", default=[]) or []
    return list(names) if names else sorted(registry().backends)


def precision_cases(names: list[str]) -> list[tuple[str, str, str]]:
    """(backend, precision, device) for every precision a backend offers on a present device."""
    from aipc.plugins import registry

    cases = []
    for name in names:
        backend = registry().backends.get(name)
        if backend is None or not backend.ok:
            continue
        for precision in backend.info.precisions:
            device = next((d.name for d in backend.info.devices if d.present and precision in d.precisions), None)
            if device:
                cases.append((name, precision, device))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not metafunc.module.__name__.startswith("aipc.conformance"):
        return
    names = selected_backends(metafunc.config)
    if "precision" in metafunc.fixturenames:
        cases = precision_cases(names)
        metafunc.parametrize(("backend_name", "precision", "device"), cases,
                             ids=[f"{b}-{p}-{d}" for b, p, d in cases], scope="session")
    elif "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", names, scope="session")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _suite_ids.update(i.nodeid for i in items if getattr(i, "module", None) and i.module.__name__.startswith("aipc.conformance."))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _suite_ids:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2]
        elif report.failed:
            reason = _failure_line(report)
        _results.append({"test": report.nodeid.split("::")[-1], "outcome": report.outcome,
                         "reason": reason, "duration_s": round(report.duration, 3)})


def _failure_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return " ".join(text.split())[:300]


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"os": platform.platform(), "python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count()}


def report_data(names: list[str]) -> dict:
    from aipc import __version__
    from aipc.plugins import registry

    backends = {}
    for name in names:
        backend = registry().backends.get(name)
        if backend is None:
            backends[name] = {"error": "not installed"}
        elif not backend.ok:
            backends[name] = {"error": backend.error}
        else:
            info = backend.info
            backends[name] = {"version": info.version, "runtime_versions": info.runtime_versions,
                              "devices": [{"name": d.name, "present": d.present, "reason": d.reason} for d in info.devices],
                              "capabilities": info.capabilities.__dict__}
    totals: dict[str, int] = {}
    for result in _results:
        totals[result["outcome"]] = totals.get(result["outcome"], 0) + 1
    return {"aipc_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": _machine(), "backends": backends, "tests": _results, "totals": totals}


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    path = config.getoption("aipc_report", default=None)
    if not _results and not path:
        return
    write = terminalreporter.write_line
    terminalreporter.section("aipc conformance")
    for result in _results:
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "skip"}.get(result["outcome"], result["outcome"])
        line = f"{mark:<5} {result['test']}"
        write(f"{line:<70} {result['reason'][:120]}" if result["reason"] else line)
    if path:
        data = report_data(selected_backends(config))
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
        write(f"report written to {path}")
