"""The aipc hooks of backend ``directml``: ONNX Runtime GenAI models built by its model builder.

Devices:

- ``DML``  DirectML (a DirectX 12 GPU or NPU) through ``onnxruntime-genai-directml``; Windows only.
  Models are built for the ``dml`` execution provider: int4, fp16.
- ``CPU``  ONNX Runtime's CPU execution provider. Models are built for ``cpu``: fp32, int8, int4.
  (fp16 is not a CPU target: it builds, then fails at decode on real models.)
- ``AUTO`` models built for ``dml`` (int4, fp16), run on DirectML when present and on the CPU
  provider otherwise. The one device that may fall back: asking for ``DML`` where it is absent
  is an error, never a silent CPU run.

This module imports no runtime: ``aipc_backend_info`` looks at installed distributions and the
platform only. ``onnxruntime_genai`` is imported inside load / generate / tokenize, and the model
builder runs in a child process (``python -m aipc_directml.build``).
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

from aipc import hookimpl
from aipc.errors import InvalidConfigError, UnsupportedDeviceError, UnsupportedPrecisionError
from aipc.types import BackendInfo, Capabilities, Chunk, Device, GenerationConfig

from . import __version__

NAME = "directml"

#: Precisions per device, and the builder's execution-provider target for each device.
DEVICE_PRECISIONS = {"DML": ("fp16", "int4"), "CPU": ("fp32", "int8", "int4"), "AUTO": ("fp16", "int4")}
TARGETS = {"DML": "dml", "CPU": "cpu", "AUTO": "dml"}

#: onnxruntime-genai variants on PyPI. Each installs the same import package ``onnxruntime_genai``.
GENAI_VARIANTS = ("onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime-genai-winml", "onnxruntime-genai-cuda")
DML_VARIANTS = ("onnxruntime-genai-directml", "onnxruntime-genai-winml")
ORT_VARIANTS = ("onnxruntime", "onnxruntime-directml", "onnxruntime-gpu", "onnxruntime-winml")

#: -o options that change the artifact (the core keys its cache on them), with their help.
QUANTIZE_OPTIONS = {
    "block_size": "int4/int8: weights per quantization block, 16/32/64/128/256 (builder default 32)",
    "accuracy_level": "int4/int8: minimum MatMul compute precision, 1=fp32 2=fp16 3=bf16 4=int8 "
    "(builder default: 4 on CPU, 0 on DML)",
    "algo_config": "int4/int8: rounding method, default/rtn/k_quant",
    "is_symmetric": "int4/int8: true (default) or false; false breaks models with tied embeddings",
    "matmul_mixed_precision": "int4: e.g. last_matmul:int8; breaks models with tied embeddings",
}
RUN_OPTIONS = {"threads": "ONNX Runtime intra-op threads (default: the runtime's; env AIPC_NUM_THREADS)"}
_BLOCK_SIZES = ("16", "32", "64", "128", "256")


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


def _devices() -> tuple[Device, ...]:
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


@hookimpl
def aipc_backend_info() -> BackendInfo:
    genai, ort = _installed()
    versions = {**genai, **ort}
    for package in ("onnx", "transformers", "torch"):
        versions[package] = _version(package) or "not installed"
    return BackendInfo(
        name=NAME,
        version=__version__,
        description="ONNX Runtime GenAI (model builder + og.Generator): DirectML on Windows, CPU provider elsewhere",
        devices=_devices(),
        default_precision="int4",
        capabilities=Capabilities(
            streaming=True,
            native_stop_strings=False,  # onnxruntime-genai has none: the core cuts at stop strings
            sampling=True,
            seed_determinism=True,  # search option random_seed
            repetition_penalty=True,
            exact_precisions=("fp32", "fp16"),
            # a kept og.Generator per slot, rewound and appended to (engine.py); CPU provider only:
            # onnxruntime-genai refuses to continue a generator whose KV cache is on DirectML
            prefix_cache=True,
            # onnxruntime-genai's own guidance (llguidance in the runtime, GeneratorParams.set_guidance):
            # run on the CPU provider (0.18.0); the DirectML wheel 0.13.1 has it built in, not run here
            constraints=("json_schema", "regex", "grammar"),
        ),
        priority=30,
        runtime_versions=versions,
        options={**QUANTIZE_OPTIONS, **RUN_OPTIONS},
        quantize_options=tuple(QUANTIZE_OPTIONS),
    )


def _device_name(device: str) -> str:
    name = (device or "").upper()
    if name not in DEVICE_PRECISIONS:
        raise UnsupportedDeviceError(f"backend {NAME!r} has no device {device!r} (it knows: DML, CPU, AUTO)")
    return name


def check_options(options: dict[str, str]) -> None:
    unknown = sorted(set(options) - set(QUANTIZE_OPTIONS) - set(RUN_OPTIONS))
    if unknown:
        known = ", ".join([*QUANTIZE_OPTIONS, *RUN_OPTIONS])
        raise InvalidConfigError(f"backend {NAME!r} has no option {', '.join(unknown)} (it has: {known})")


def builder_options(precision: str, device: str, options: dict[str, str], tied_embeddings: bool) -> dict[str, str]:
    """The builder's ``--extra_options`` for the user's ``-o`` options, validated."""
    check_options(options)
    chosen = {k: v.strip() for k, v in options.items() if k in QUANTIZE_OPTIONS}
    if chosen and precision not in ("int4", "int8"):
        raise InvalidConfigError(f"option(s) {', '.join(sorted(chosen))} apply to int4/int8 only, not {precision}")
    if "block_size" in chosen and chosen["block_size"] not in _BLOCK_SIZES:
        raise InvalidConfigError(f"block_size must be one of {', '.join(_BLOCK_SIZES)}, got {chosen['block_size']!r}")
    if "accuracy_level" in chosen and chosen["accuracy_level"] not in ("0", "1", "2", "3", "4"):
        raise InvalidConfigError(f"accuracy_level must be 0-4, got {chosen['accuracy_level']!r}")
    if "algo_config" in chosen and chosen["algo_config"] not in ("default", "rtn", "k_quant"):
        raise InvalidConfigError(f"algo_config must be default, rtn or k_quant, got {chosen['algo_config']!r}")
    if "is_symmetric" in chosen:
        value = chosen["is_symmetric"].lower()
        if value not in ("true", "false", "1", "0"):
            raise InvalidConfigError(f"is_symmetric must be true or false, got {chosen['is_symmetric']!r}")
        chosen["is_symmetric"] = "false" if value in ("false", "0") else "true"
    if "matmul_mixed_precision" in chosen and precision != "int4":
        raise InvalidConfigError("matmul_mixed_precision applies to int4 only")
    if tied_embeddings and (chosen.get("is_symmetric") == "false" or "matmul_mixed_precision" in chosen):
        raise InvalidConfigError(
            "this model ties its input and output embeddings: the builder's is_symmetric=false and "
            "matmul_mixed_precision produce a broken model for it (measured on SmolLM2); leave them out"
        )
    return chosen


@hookimpl
def aipc_quantize(request) -> Any:
    device = _device_name(request.device)
    if request.precision not in DEVICE_PRECISIONS[device]:
        raise UnsupportedPrecisionError(
            f"backend {NAME!r} has no {request.precision} on {device} "
            f"(it has: {', '.join(DEVICE_PRECISIONS[device])})"
            + ("; fp16 is not a CPU target of the model builder: use device AUTO or DML" if request.precision == "fp16" else "")
            + ("; fp32 is not a DirectML target: use device CPU" if request.precision == "fp32" else "")
        )
    from .quantize import build

    return build(request, TARGETS[device])


@hookimpl
def aipc_detect_artifact(folder: Path) -> str | None:
    folder = Path(folder)
    if not (folder / "genai_config.json").is_file():
        return None
    from .artifact import precision_of

    return precision_of(folder)


@hookimpl
def aipc_load(request) -> Any:
    check_options(request.options)
    from .engine import load

    return load(request, _device_name(request.device or "AUTO"))


@hookimpl
def aipc_generate(model, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    from .engine import generate

    return generate(model, prompt, config)


@hookimpl
def aipc_tokenize(model, text: str) -> list[int]:
    from .engine import encode

    return encode(model, text)
