"""pytest plugin (entry point ``pytest11``) behind the conformance suite.

    pytest --pyargs aipc.conformance --backend NAME [--aipc-report report.json]
    aipc conformance --backend NAME --json report.json

It parametrizes the suite's tests over the selected backends (default: every installed one)
and the precisions each declares on a present device, and writes a certification report.
Importing this module is cheap: pytest loads it in every session of an environment with aipc.

The report records how the suite was run (arguments, ``-m``, ``-k``), what was deselected or
skipped and why, and a verdict per backend: ``certified`` only for a full, unfiltered run (every
test of the suite collected, nothing deselected, nothing left unrun) in which no test of that
backend failed and at least one passed. Skips do not prevent certification: the suite skips only
what a backend's capabilities do not claim (or what does not apply to a precision), and each skip
is listed with its reason.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import time
from pathlib import Path

import pytest

_results: list[dict] = []
_suite_ids: dict[str, str] = {}  # node id -> backend name ("" if the test is not per backend)
_collected_functions: set[str] = set()
_deselected: list[dict] = []
_reported: set[str] = set()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aipc", "aipc conformance suite")
    group.addoption("--backend", action="append", default=[], metavar="NAME",
                    help="aipc backend(s) to check (repeatable; default: every installed one).")
    group.addoption("--aipc-report", metavar="FILE", help="Write the aipc certification report (JSON) here.")
    group.addoption("--aipc-keep", action="append", default=[], metavar="PRECISION=SHARE",
                    help="Raise the share of the reference's right answers a lower precision must keep "
                         "(default 0.4), e.g. int4=0.9: a project's own bar for its backends. Repeatable.")


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


def _in_suite(item: pytest.Item) -> bool:
    return bool(getattr(item, "module", None)) and item.module.__name__.startswith("aipc.conformance.")


def _backend_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("backend_name", "")) if callspec else ""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: before -m / -k deselect anything, so the deselected items are still listed here
    suite = [i for i in items if _in_suite(i)]
    _suite_ids.update((i.nodeid, _backend_of(i)) for i in suite)
    _collected_functions.update(getattr(i, "originalname", i.name) for i in suite)


def pytest_deselected(items) -> None:
    _deselected.extend({"test": i.nodeid.split("::")[-1], "backend": _backend_of(i)} for i in items if _in_suite(i))


def suite_functions() -> set[str]:
    """Every test function the suite defines (read from its modules, not imported)."""
    names = set()
    for module in Path(__file__).parent.glob("test_*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        names.update(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))
    return names


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _suite_ids:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2]
        elif report.failed:
            reason = _failure_line(report)
        _reported.add(report.nodeid)
        _results.append({"test": report.nodeid.split("::")[-1], "backend": _suite_ids[report.nodeid],
                         "outcome": report.outcome, "reason": reason, "duration_s": round(report.duration, 3)})


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


def run_filters(config: pytest.Config) -> list[str]:
    """Why this run is not the whole suite (empty for a full, unfiltered run)."""
    reasons = []
    if config.getoption("markexpr", default=""):
        reasons.append(f"filtered with -m {config.getoption('markexpr')!r}")
    if config.getoption("keyword", default=""):
        reasons.append(f"filtered with -k {config.getoption('keyword')!r}")
    if _deselected:
        reasons.append(f"{len(_deselected)} test(s) deselected")
    if any("::" in str(arg) for arg in config.args):
        reasons.append("tests selected by node id")
    missing = sorted(suite_functions() - _collected_functions)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        reasons.append(f"{len(missing)} of the suite's tests not collected: {shown}")
    unrun = len(_suite_ids) - len(_reported) - len(_deselected)
    if unrun > 0:
        reasons.append(f"{unrun} test(s) did not run (stopped early)")
    return reasons


def verdict(backend: str, filters: list[str]) -> dict:
    """``certified`` only for a full, unfiltered run with no failure and at least one pass."""
    mine = [r for r in _results if r["backend"] == backend]
    reasons = list(filters)
    failed = sum(r["outcome"] == "failed" for r in mine)
    if failed:
        reasons.append(f"{failed} test(s) failed")
    if not any(r["outcome"] == "passed" for r in mine):
        reasons.append("no test passed")
    return {"certified": not reasons, "verdict": "certified" if not reasons else "not certified", "reasons": reasons}


def report_data(names: list[str], config: pytest.Config | None = None) -> dict:
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
    totals: dict[str, int] = {"deselected": len(_deselected)} if _deselected else {}
    skips: dict[str, int] = {}
    for result in _results:
        totals[result["outcome"]] = totals.get(result["outcome"], 0) + 1
        if result["outcome"] == "skipped":
            skips[result["reason"]] = skips.get(result["reason"], 0) + 1
    filters = run_filters(config) if config is not None else []
    for name, entry in backends.items():
        entry.update(verdict(name, filters))
    certified = bool(backends) and all(b["certified"] for b in backends.values())
    run = {"arguments": list(config.invocation_params.args) if config is not None else [],
           "markexpr": config.getoption("markexpr", default="") if config is not None else "",
           "keyword": config.getoption("keyword", default="") if config is not None else "",
           "keep": config.getoption("aipc_keep", default=[]) if config is not None else [],
           "filters": filters}
    return {"aipc_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": _machine(), "run": run, "verdict": "certified" if certified else "not certified",
            "backends": backends, "tests": _results, "totals": totals, "deselected": _deselected, "skips": skips}


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
    data = report_data(selected_backends(config), config)
    for name, entry in data["backends"].items():
        if "verdict" in entry:
            why = f": {'; '.join(entry['reasons'])}" if entry["reasons"] else ""
            write(f"verdict for {name}: {entry['verdict'].upper()}{why}")
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
        write(f"report written to {path}")
