#!/usr/bin/env python3
"""Build the Intel NPU Acceleration Library wheel on Linux, offline, and cache it.

PyPI has only the 1.4.0 sdist for Linux. Its CMakeLists.txt downloads an OpenVINO 2024.4 archive
from the vendor's storage (``FetchContent`` with ``OV_LIBRARY_URL``) and accepts only Ubuntu. This
script feeds it the PyPI ``openvino==2024.4.0`` wheel instead, re-laid in the archive's layout:

    runtime/cmake/           OpenVINOConfig.cmake & co (find_package(OpenVINO PATHS .../runtime/cmake))
    runtime/lib/intel64/     the shared libraries, plus libopenvino*.so links to the versioned files
                             (copied next to the extension; its loader opens "libopenvino.so")
    python/openvino/         the Python package (copied to the wheel's external/openvino)
    openvino/                the wheel's own tree: the cmake files resolve headers and libraries
                             relative to themselves (<prefix>/openvino/{include,libs,cmake})

and passes ``-DOV_LIBRARY_URL=file://<that archive>``: the sdist's setup.py passes no CMake
arguments through, so a copy of it gets one extra line (``cmake_args += shlex.split(
os.environ["NPU_LIBRARY_CMAKE_ARGS"])``). Only OpenVINO 2024.4 works: built against 2026.x every
matmul fails with "Unsupported dtype".

The wheel lands in ``--wheel-dir`` (default ``$AIPC_NPU_WHEEL_DIR`` or ``~/.cache/aipc-npu/wheels``)
under a name that includes the build key (library and OpenVINO versions, Python tag, this script's
recipe version). A second run finds it and skips the build. ``--install`` installs it into the
running interpreter with ``pip --no-deps`` (its dependencies come from the tox env's pinned deps).

Needs: a C++ compiler, cmake >= 3.16 and ``pip`` (``setuptools<81`` and ``wheel`` for the build,
installed into the running interpreter; the build runs without isolation so it uses them).
Note: the sdist compiles with ``-march=native``; a cached wheel is for machines like this one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

LIBRARY = "intel-npu-acceleration-library"
LIBRARY_VERSION = "1.4.0"
OPENVINO_VERSION = "2024.4.0"
RECIPE = 1  # bump when the way the wheel is built changes (invalidates cached wheels)

SETUP_PATCH_ANCHOR = '            "-DSETUPTOOL_BUILD=True",\n        ]\n'
SETUP_PATCH = (
    '            "-DSETUPTOOL_BUILD=True",\n        ]\n'
    '        import shlex  # aipc-npu: pass extra CMake arguments (the offline OpenVINO archive)\n'
    '        cmake_args += shlex.split(os.environ.get("NPU_LIBRARY_CMAKE_ARGS", ""))\n'
)


def log(message: str) -> None:
    print(f"[build_library] {message}", flush=True)


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def build_key() -> str:
    data = {"library": LIBRARY_VERSION, "openvino": OPENVINO_VERSION, "python": python_tag(),
            "platform": sysconfig.get_platform(), "recipe": RECIPE}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def default_wheel_dir() -> Path:
    env = os.environ.get("AIPC_NPU_WHEEL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "aipc-npu" / "wheels"


def cached_wheel(wheel_dir: Path) -> Path | None:
    marker = wheel_dir / f"{LIBRARY}-{LIBRARY_VERSION}-{build_key()}.json"
    if not marker.is_file():
        return None
    try:
        wheel = wheel_dir / json.loads(marker.read_text())["wheel"]
    except (ValueError, KeyError):
        return None
    return wheel if wheel.is_file() else None


def run(cmd: list[str], **kwargs) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kwargs)


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def download(work: Path) -> tuple[Path, Path]:
    """The sdist and the OpenVINO wheel, through pip (PyPI or the configured index)."""
    dl = work / "downloads"
    dl.mkdir()
    run(pip("download", "--no-deps", "--no-binary", ":all:", f"{LIBRARY}=={LIBRARY_VERSION}", "-d", str(dl)))
    run(pip("download", "--no-deps", "--only-binary", ":all:", f"openvino=={OPENVINO_VERSION}", "-d", str(dl)))
    sdist = next(dl.glob("intel_npu_acceleration_library-*.tar.gz"))
    wheel = next(dl.glob("openvino-*.whl"))
    return sdist, wheel


def relayout_openvino(wheel: Path, work: Path) -> Path:
    """The PyPI OpenVINO wheel as the vendor archive's tree, packed as .tar.gz; returns it."""
    unpacked = work / "ov-wheel"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    package = unpacked / "openvino"
    root = work / "ov-archive" / f"openvino_{OPENVINO_VERSION}"
    shutil.copytree(package, root / "openvino", symlinks=True)  # what the cmake files point into
    shutil.copytree(package / "cmake", root / "runtime" / "cmake")
    libdir = root / "runtime" / "lib" / "intel64"
    libdir.mkdir(parents=True)
    for lib in sorted((package / "libs").iterdir()):
        if lib.is_file():
            shutil.copy2(lib, libdir / lib.name)
            # libopenvino.so.2440 -> also libopenvino.so (the archive ships these links; the
            # library's Python loader opens "libopenvino.so")
            stem = lib.name.split(".so")[0]
            if ".so." in lib.name and not (libdir / f"{stem}.so").exists():
                os.symlink(lib.name, libdir / f"{stem}.so")
    (root / "python").mkdir()
    shutil.copytree(package, root / "python" / "openvino", symlinks=True)
    archive = work / f"openvino_{OPENVINO_VERSION}_relaid.tgz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(root, arcname=root.name)
    return archive


def patch_setup(source: Path) -> None:
    setup = source / "setup.py"
    text = setup.read_text()
    if SETUP_PATCH_ANCHOR not in text:
        raise SystemExit(f"setup.py of {LIBRARY} {LIBRARY_VERSION} has changed: cannot patch it")
    setup.write_text(text.replace(SETUP_PATCH_ANCHOR, SETUP_PATCH, 1))


def check_tools() -> None:
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing build tools: {', '.join(missing)} (pip install cmake; apt-get install g++)")


def build(wheel_dir: Path, jobs: int) -> Path:
    check_tools()
    started = time.perf_counter()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="npu-library-build-") as tmp:
        work = Path(tmp)
        sdist, ov_wheel = download(work)
        log(f"downloaded in {time.perf_counter() - started:.0f} s")
        archive = relayout_openvino(ov_wheel, work)
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "src")
        source = next((work / "src").iterdir())
        patch_setup(source)
        env = dict(os.environ)
        env["NPU_LIBRARY_CMAKE_ARGS"] = f"-DOV_LIBRARY_URL=file://{archive}"
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(jobs))
        out = work / "dist"
        run(pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)), env=env)
        built = next(out.glob("intel_npu_acceleration_library-*.whl"))
        # linux_x86_64 tag as built; keep the name pip expects, the key goes into the marker
        final = wheel_dir / built.name
        shutil.copy2(built, final)
    marker = wheel_dir / f"{LIBRARY}-{LIBRARY_VERSION}-{build_key()}.json"
    seconds = round(time.perf_counter() - started, 1)
    marker.write_text(json.dumps({"wheel": final.name, "build_s": seconds, "openvino": OPENVINO_VERSION,
                                  "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    log(f"built {final.name} in {seconds} s")
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, default=default_wheel_dir(), help="where the wheel is cached")
    parser.add_argument("--install", action="store_true", help="pip install the wheel (--no-deps) into this Python")
    parser.add_argument("--force", action="store_true", help="build even if a cached wheel exists")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel compile jobs")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        log("not Linux: install the PyPI wheel instead (pip install intel-npu-acceleration-library, cp311 win_amd64)")
        return 0
    wheel = None if args.force else cached_wheel(args.wheel_dir)
    if wheel:
        log(f"cached: {wheel}")
    else:
        wheel = build(args.wheel_dir, args.jobs)
    if args.install:
        run(pip("install", "--no-deps", "--force-reinstall", str(wheel)))
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
