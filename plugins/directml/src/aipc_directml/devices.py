"""The directml backend's devices and installed runtimes, probed without importing them (package
metadata and the platform only): what ``aipc_backend_info`` describes and ``engine`` checks."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from aipc.errors import UnsupportedDeviceError
from aipc.types import Device

NAME = "directml"

#: Precisions per device, and the builder's execution-provider target for each device.
DEVICE_PRECISIONS = {"DML": ("fp16", "int4"), "CPU": ("fp32", "int8", "int4"), "AUTO": ("fp16", "int4")}
TARGETS = {"DML": "dml", "CPU": "cpu", "AUTO": "dml"}

#: onnxruntime-genai variants on PyPI. Each installs the same import package ``onnxruntime_genai``.
GENAI_VARIANTS = ("onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime-genai-winml", "onnxruntime-genai-cuda")
DML_VARIANTS = ("onnxruntime-genai-directml", "onnxruntime-genai-winml")
ORT_VARIANTS = ("onnxruntime", "onnxruntime-directml", "onnxruntime-gpu", "onnxruntime-winml")

def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def _installed() -> tuple[dict[str, str], dict[str, str]]:
    """The onnxruntime-genai and onnxruntime distributions installed here, with versions."""
    genai = {name: v for name in GENAI_VARIANTS if (v := _version(name))}
    ort = {name: v for name in ORT_VARIANTS if (v := _version(name))}
    return genai, ort


def _directx12() -> bool:
    system_root = os.environ.get("SystemRoot", r"C:\Windows")
    return Path(system_root, "System32", "D3D12.dll").is_file()


def describe_devices() -> tuple[Device, ...]:
    genai, ort = _installed()
    names = ", ".join(f"{n} {v}" for n, v in genai.items())
    if not genai:
        missing = "onnxruntime-genai is not installed (pip install aipc-directml installs it)"
        return tuple(Device(d, DEVICE_PRECISIONS[d], False, missing, d == "DML") for d in ("DML", "CPU", "AUTO"))
    if len(genai) > 1:
        clash = f"several onnxruntime-genai variants are installed ({names}); they overwrite each other: keep one"
        return tuple(Device(d, DEVICE_PRECISIONS[d], False, clash, d == "DML") for d in ("DML", "CPU", "AUTO"))
    if sys.platform != "win32":
        dml_reason = f"DirectML needs Windows with DirectX 12; this is {sys.platform} with {names}"
    elif not any(n in genai for n in DML_VARIANTS):
        dml_reason = f"the installed {names} has no DirectML; install onnxruntime-genai-directml instead"
    elif not _directx12():
        dml_reason = "DirectX 12 (D3D12.dll) was not found on this Windows"
    else:
        dml_reason = ""
    if len(ort) > 1:
        # onnxruntime-genai loads whichever onnxruntime won the file overwrite: say so, but let it run
        dml_reason = dml_reason or f"several onnxruntime builds are installed ({', '.join(ort)}); keep one"
    return (
        Device("DML", DEVICE_PRECISIONS["DML"], present=not dml_reason, reason=dml_reason, accelerator=True),
        Device("CPU", DEVICE_PRECISIONS["CPU"]),
        Device("AUTO", DEVICE_PRECISIONS["AUTO"]),
    )


def runtime_versions() -> dict[str, str]:
    """The onnxruntime(-genai) builds installed here and the builder's libraries, with versions."""
    genai, ort = _installed()
    versions = {**genai, **ort}
    for package in ("onnx", "transformers", "torch", "auto-round"):
        versions[package] = _version(package) or "not installed"
    return versions


def device_name(device: str) -> str:
    name = (device or "").upper()
    if name not in DEVICE_PRECISIONS:
        raise UnsupportedDeviceError(f"backend {NAME!r} has no device {device!r} (it knows: DML, CPU, AUTO)")
    return name
