"""Check, without Windows, that each plugin's dependency set resolves for Windows.

For every dependency set (the core, each plugin, the npu extras) this runs pip's resolver for
``win_amd64`` and CPython 3.11 and 3.12, binary wheels only, against the repository's pins:

    pip install --dry-run --ignore-installed --only-binary=:all: --platform win_amd64
        --python-version 3.11 --implementation cp -c constraints.txt -c plugins/P/constraints.txt DEPS

Our own packages are local source trees (never wheels on PyPI), so instead of the packages this
resolves what they declare (read from their pyproject.toml, environment markers evaluated for
Windows), following our packages' dependencies on each other (aipc, aipc-openvino-common).
Needs PyPI; exits 1 naming each set that does not resolve. Usage:

    python .ci/windows_resolve.py [SET ...]      # sets: core directml openvino npu npu-library
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"aipc": ROOT / "core", "aipc-openvino-common": ROOT / "plugins/openvino-common",
         "aipc-openvino": ROOT / "plugins/openvino", "aipc-directml": ROOT / "plugins/directml",
         "aipc-npu": ROOT / "plugins/npu"}
#: set name -> (package, extras, constraint files, Python versions)
SETS = {
    "core": ("aipc", (), ("constraints.txt",), ("3.11", "3.12")),
    "directml": ("aipc-directml", (), ("constraints.txt", "plugins/directml/constraints.txt"), ("3.11", "3.12")),
    "openvino": ("aipc-openvino", (), ("constraints.txt", "plugins/openvino/constraints.txt"), ("3.11", "3.12")),
    "npu": ("aipc-npu", ("export",), ("constraints.txt", "plugins/npu/constraints.txt"), ("3.11", "3.12")),
    # the Intel NPU Acceleration Library publishes one Windows wheel, for CPython 3.11
    "npu-library": ("aipc-npu", ("library",), ("plugins/npu/constraints-library.txt",), ("3.11",)),
}


def windows(python: str, extra: str = "") -> dict[str, str]:
    env = default_environment()
    env.update(sys_platform="win32", platform_system="Windows", os_name="nt", platform_machine="AMD64",
               implementation_name="cpython", platform_python_implementation="CPython",
               python_version=python, python_full_version=f"{python}.0", extra=extra)
    return env


def requirements(package: str, extras: tuple[str, ...], python: str, seen: set[str] | None = None) -> list[str]:
    """What ``package[extras]`` needs on Windows, with our local packages replaced by their own needs."""
    seen = set() if seen is None else seen
    seen.add(package)
    project = tomllib.loads((LOCAL[package] / "pyproject.toml").read_text())["project"]
    declared = [(r, "") for r in project.get("dependencies", [])]
    for extra in extras:
        declared += [(r, extra) for r in project.get("optional-dependencies", {}).get(extra, [])]
    wanted = []
    for text, extra in declared:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(windows(python, extra)):
            continue
        name = canonicalize_name(requirement.name)
        if name in LOCAL:
            if name not in seen:
                wanted += requirements(name, tuple(requirement.extras), python, seen)
            continue
        requirement.marker = None
        wanted.append(str(requirement))
    return wanted


#: pip evaluates the environment markers of dependencies (torch's Linux-only nvidia-* wheels)
#: for the machine it runs on, even with --platform: run it with Windows' marker values
PIP_FOR_WINDOWS = """
import sys
from pip._vendor.packaging import markers
host = markers.default_environment
markers.default_environment = lambda: {**host(), **WINDOWS}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def resolve(name: str, python: str) -> tuple[bool, str]:
    package, extras, constraints, _ = SETS[name]
    target = {k: v for k, v in windows(python).items() if k != "extra"}
    # --isolated: PyPI as a Windows user sees it, not this machine's pip configuration (local indexes)
    command = [sys.executable, "-c", f"WINDOWS = {target!r}\n{PIP_FOR_WINDOWS}", "install", "--isolated",
               "--dry-run", "--ignore-installed", "--quiet",
               "--only-binary=:all:", "--platform", "win_amd64", "--python-version", python, "--implementation", "cp",
               "--disable-pip-version-check", "--no-warn-conflicts"]
    for file in constraints:
        command += ["-c", str(ROOT / file)]
    result = subprocess.run(command + requirements(package, extras, python), capture_output=True, text=True)
    lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return result.returncode == 0, "\n    ".join(lines[-6:])


def main(names: list[str]) -> int:
    failures = 0
    for name in names or list(SETS):
        for python in SETS[name][3]:
            ok, why = resolve(name, python)
            print(f"{'ok  ' if ok else 'FAIL'} {name} on win_amd64 CPython {python}" + ("" if ok else f":\n    {why}"), flush=True)
            failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
