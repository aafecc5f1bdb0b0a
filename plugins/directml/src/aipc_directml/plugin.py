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

from pathlib import Path
from typing import Any, Iterator

from aipc import hookimpl
from aipc.errors import UnsupportedPrecisionError
from aipc.types import BackendInfo, Capabilities, Chunk, GenerationConfig

from . import __version__
from .devices import DEVICE_PRECISIONS, NAME, TARGETS, device_name, describe_devices, runtime_versions
from .options import QUANTIZE_OPTIONS, RECIPE, RUN_OPTIONS, builder_options, check_options  # noqa: F401 - builder_options: its old home


@hookimpl
def aipc_backend_info() -> BackendInfo:
    return BackendInfo(
        name=NAME,
        version=__version__,
        description="ONNX Runtime GenAI (model builder + og.Generator): DirectML on Windows, CPU provider elsewhere",
        devices=describe_devices(),
        default_precision="int4",
        capabilities=Capabilities(
            streaming=True, validates_inputs=True,
            native_stop_strings=False,  # onnxruntime-genai has none: the core cuts at stop strings
            sampling=True,
            seed_determinism=True,  # search option random_seed
            repetition_penalty=True,
            exact_precisions=("fp32", "fp16"),
            # a kept og.Generator per slot, rewound and appended to (engine.py); CPU provider only:
            # onnxruntime-genai refuses to continue a generator whose KV cache is on DirectML
            prefix_cache=True,
            # a new generator from the whole sequence at a LongRoPE crossing (engine.py; not under guidance)
            longrope_reencode=True,
            # onnxruntime-genai's own guidance (llguidance in the runtime, GeneratorParams.set_guidance):
            # run on the CPU provider (0.18.0); the DirectML wheel 0.13.1 has it built in, not run here
            constraints=("json_schema", "regex", "grammar"),
        ),
        priority=30,
        runtime_versions=runtime_versions(),
        options={**QUANTIZE_OPTIONS, **RUN_OPTIONS},
        quantize_options=tuple(QUANTIZE_OPTIONS),
        artifact_variant=f"recipe-{RECIPE}",  # new defaults, new artifacts (options.DEFAULTS)
    )


@hookimpl
def aipc_quantize(request) -> Any:
    device = device_name(request.device)
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

    return load(request, device_name(request.device or "AUTO"))


@hookimpl
def aipc_generate(model, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    from .engine import generate

    return generate(model, prompt, config)


@hookimpl
def aipc_tokenize(model, text: str) -> list[int]:
    from .engine import encode

    return encode(model, text)
