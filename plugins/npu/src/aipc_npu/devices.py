"""Cheap device probes for ``aipc_backend_info``: no runtime import, no subprocess.

The core calls ``aipc_backend_info`` on every ``aipc`` start, so presence is judged from files:

- the real ``NPU``: the kernel driver's device node ``/dev/accel/accel*`` (Linux), the user-mode
  driver OpenVINO's NPU plugin opens through Level Zero (``libze_intel_npu.so``; on Windows the
  Level Zero loader ``ze_loader.dll`` that the driver installs), and the engine's runtime with its
  NPU plugin (``openvino/libs/libopenvino_intel_npu_plugin.so`` for the default engine; the
  library bundles its own OpenVINO 2024.4 with that plugin);
- ``NPU-EMU``, the CPU stand-in: present only when ``AIPC_NPU_EMULATE=1``. It runs the NPU code
  path on the CPU (default engine: the NPU pipeline with ``NPUW_DEVICES=CPU`` and
  ``NPUW_ONLINE_PIPELINE=NONE``; library engine: the library's own OpenVINO CPU fallback). It is
  never an accelerator, and its timings are never NPU performance;
- ``AUTO``: the NPU when present, else the plain CPU pipeline. Offered only where the user names
  it; see :func:`auto_device` for why it is absent while the core cannot tell a named device
  from a default one.

``aipc_load`` then asks the runtime itself (``openvino.Core().available_devices``) before compiling
for ``NPU`` and refuses with the runtime's own reason.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

EMULATE_ENV = "AIPC_NPU_EMULATE"
ENGINE_ENV = "AIPC_NPU_ENGINE"
ENGINES = ("openvino", "library")

NPU = "NPU"
EMULATED = "NPU-EMU"
AUTO = "AUTO"

#: Precisions per engine (widest first). The NPU computes in fp16: fp32 weights would only be
#: converted, so fp32 is not offered.
PRECISIONS = {"openvino": ("fp16", "int8", "int4"), "library": ("fp16", "int8", "int4")}

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib", "/usr/local/lib64")


def emulation_on() -> bool:
    return os.environ.get(EMULATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _find(pattern: str, dirs) -> bool:
    return any(glob.glob(os.path.join(d, pattern)) for d in dirs if d)


@lru_cache(maxsize=4)
def runtime(engine: str) -> tuple[bool, str]:
    """Is the engine's runtime installed? (present, reason)."""
    if engine == "openvino":
        missing = [name for name in ("openvino", "openvino_genai") if package_dir(name) is None]
        if missing:
            return False, f"{' and '.join(missing)} not installed (pip install aipc-npu)"
        return True, ""
    if package_dir("intel_npu_acceleration_library") is None:
        return False, ("intel-npu-acceleration-library not installed (pip install 'aipc-npu[library]'; on Linux "
                       "build it with plugins/npu/scripts/build_library.py)")
    return True, ""


def _npu_plugin_lib(engine: str) -> Path | None:
    if engine == "openvino":
        libs = package_dir("openvino")
        libs = libs / "libs" if libs else None
    else:
        libs = package_dir("intel_npu_acceleration_library")
        libs = libs / ("lib/Release" if sys.platform == "win32" else "lib") if libs else None
    return libs


@lru_cache(maxsize=4)
def npu(engine: str) -> tuple[bool, str]:
    """Is a real Intel NPU usable by this engine? (present, reason when absent)."""
    if sys.platform == "darwin":
        return False, "no NPU on this machine (macOS has no Intel NPU driver)"
    if sys.platform.startswith("linux"):
        if not glob.glob("/dev/accel/accel*"):
            return False, ("no NPU on this machine: no device node /dev/accel/accel* (no Intel NPU, or its "
                           "kernel driver intel_vpu is not loaded, or it is not visible in this container)")
        dirs = [*os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep), *LIBRARY_DIRS]
        if not _find("libze_intel_npu.so*", dirs):
            return False, ("/dev/accel is there but the NPU user-mode driver libze_intel_npu.so is not "
                           "(install intel-driver-compiler-npu and intel-level-zero-npu)")
    elif sys.platform == "win32":
        system32 = Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32"
        if not (system32 / "ze_loader.dll").is_file():
            return False, "no NPU on this machine: no Level Zero loader ze_loader.dll (install the Intel NPU driver)"
    ok, reason = runtime(engine)
    if not ok:
        return False, reason
    libs = _npu_plugin_lib(engine)
    pattern = "openvino_intel_npu_plugin*.dll" if sys.platform == "win32" else "libopenvino_intel_npu_plugin*.so*"
    if libs is None or not list(libs.glob(pattern)):
        return False, f"the {engine} engine's OpenVINO has no NPU plugin ({pattern.replace('*', '')} not in {libs})"
    return True, ""


def emulated(engine: str) -> tuple[bool, str]:
    if not emulation_on():
        return False, (f"CPU stand-in for tests, off: set {EMULATE_ENV}=1 to run the NPU code path on the CPU "
                       "(correctness only, never NPU performance)")
    return runtime(engine)


def auto_supported() -> bool:
    """Whether the core can keep a present device out of its default choice (a ``Device`` field
    ``auto_select``). Without it, an always-present AUTO would become the default device on a
    machine without an NPU: the silent fallback the NPU backend must not do."""
    from aipc.types import Device

    return "auto_select" in getattr(Device, "__dataclass_fields__", {})


def auto(engine: str) -> tuple[bool, str]:
    ok, reason = runtime(engine)
    if not ok:
        return False, reason
    if auto_supported():
        return True, ""
    present, why = npu(engine)
    if present:
        return True, ""
    return False, ("without an NPU, AUTO (NPU, else CPU) is held back: aipc's core cannot yet keep a device "
                   "out of its default choice, so AUTO would become a silent CPU fallback")


def probe(engine: str) -> dict[str, tuple[bool, str]]:
    return {NPU: npu(engine), EMULATED: emulated(engine), AUTO: auto(engine)}
