"""Cheap device probes for ``aipc_backend_info``: no ``import openvino``, no subprocess.

Why cheap probes and not ``openvino.Core().available_devices``: the core calls
``aipc_backend_info`` on every ``aipc`` start, and importing openvino plus creating a Core
(which loads every device plugin) costs ~0.4 s and ~60 MB. Each probe below checks exactly the
dependency whose absence OpenVINO itself reports when it fails to open the device, so the
reason shown in ``aipc backends`` is the one OpenVINO would give:

- GPU: OpenVINO's GPU plugin links ``libOpenCL.so.1`` (``OpenCL.dll`` on Windows); loading the
  plugin fails with "libOpenCL.so.1: cannot open shared object file" without it. We try to
  ``dlopen`` that exact library (sub-millisecond; the ICD loader does nothing until called)
  and, on Linux, look for a DRM render node ``/dev/dri/renderD*``.
- NPU: compiling on NPU loads ``libopenvino_intel_npu_compiler_loader`` from OpenVINO's own
  ``libs`` folder ("VCL compiler loading failed ... cannot open shared object file"), and the
  driver exposes ``/dev/accel/accel*`` on Linux. We look for both without importing openvino
  (``importlib.util.find_spec`` only locates the package).
- CPU is present on x86-64 and ARM64; AUTO is present when any device is (it falls back to CPU).

A probe can say "present" for a device that then fails (e.g. OpenCL present but no Intel GPU
behind it): ``aipc_load`` asks OpenVINO for real and raises ``BackendUnavailableError`` with
OpenVINO's own message, and ``aipc openvino devices`` shows OpenVINO's authoritative view.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

#: What each device can hold. The same IR runs everywhere; NPU artifacts get NPU export settings.
PRECISIONS = ("fp32", "fp16", "int8", "int4")
NPU_PRECISIONS = ("fp16", "int8", "int4")


@lru_cache(maxsize=1)
def openvino_libs_dir() -> Path | None:
    """OpenVINO's shared-library folder inside the installed wheel, found without importing it."""
    try:
        spec = importlib.util.find_spec("openvino")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        libs = Path(location) / "libs"
        if libs.is_dir():
            return libs
        if Path(location).is_dir():
            return Path(location)
    return None


def _can_dlopen(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


@lru_cache(maxsize=1)
def cpu() -> tuple[bool, str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "aarch64", "arm64"):
        return True, ""
    return False, f"OpenVINO's CPU plugin supports x86-64 and ARM64, not {machine or 'this processor'}"


@lru_cache(maxsize=1)
def gpu() -> tuple[bool, str]:
    if sys.platform == "darwin":
        return False, "OpenVINO has no GPU plugin on macOS"
    library = "OpenCL.dll" if sys.platform == "win32" else "libOpenCL.so.1"
    if not _can_dlopen(library):
        return False, (
            f"{library} not found: OpenVINO's GPU plugin needs the OpenCL ICD loader and Intel's GPU "
            "compute runtime (Linux: ocl-icd-libopencl1 + intel-opencl-icd)"
        )
    if sys.platform.startswith("linux") and not glob.glob("/dev/dri/renderD*"):
        return False, "no GPU render node /dev/dri/renderD* (no GPU driver loaded, or not visible in this container)"
    return True, ""


@lru_cache(maxsize=1)
def npu() -> tuple[bool, str]:
    if sys.platform == "darwin":
        return False, "OpenVINO has no NPU plugin on macOS"
    libs = openvino_libs_dir()
    if libs is None:
        return False, "the openvino package is not installed"
    loader = "openvino_intel_npu_compiler_loader"
    pattern = f"{loader}*.dll" if sys.platform == "win32" else f"lib{loader}*.so*"
    on_path = any(glob.glob(os.path.join(d, pattern)) for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d)
    if not any(libs.glob(pattern)) and not on_path:
        return False, (
            f"{pattern.replace('*', '')} not found in {libs}: OpenVINO's NPU compiler loader library "
            "is missing (it comes with the Intel NPU driver / full OpenVINO runtime)"
        )
    if sys.platform.startswith("linux") and not glob.glob("/dev/accel/accel*"):
        return False, "no NPU device node /dev/accel/accel* (the Intel NPU driver is not loaded)"
    return True, ""


def probe() -> dict[str, tuple[bool, str]]:
    """Device name -> (present, reason when absent). Memoised: free after the first call."""
    found = {"CPU": cpu(), "GPU": gpu(), "NPU": npu()}
    found["GPU.0"] = found["GPU"]
    any_present = any(present for present, _ in found.values())
    found["AUTO"] = (True, "") if any_present else (False, "no device present for AUTO to choose")
    return found
