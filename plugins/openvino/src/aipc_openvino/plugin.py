"""The ``openvino`` backend's hooks (entry point ``aipc_openvino.plugin``).

Importing this module is cheap: the runtimes (openvino, openvino_genai, optimum-intel, nncf,
transformers) are imported inside the hook bodies that need them, through
:mod:`aipc_openvino.export` (quantize) and :mod:`aipc_openvino.runtime` (load/generate).
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from aipc import hookimpl
from aipc.plugins import package_versions
from aipc.constraints import KINDS
from aipc.errors import UnsupportedDeviceError, UnsupportedPrecisionError
from aipc.options import UPPERCASE
from aipc.types import BackendInfo, Capabilities, Chunk, Device, GenerationConfig, LoadedModel

from . import __version__, devices
from .options import HELP, QUANTIZE_OPTIONS

NAME = "openvino"
DEVICES = ("CPU", "GPU", "GPU.0", "NPU", "AUTO")


@lru_cache(maxsize=1)
def _runtime_versions() -> dict[str, str]:
    return package_versions("openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "nncf")


@hookimpl
def aipc_backend_info() -> BackendInfo:
    probed = devices.probe()
    listed = []
    for name in DEVICES:
        present, reason = probed[name]
        precisions = devices.NPU_PRECISIONS if name == "NPU" else devices.PRECISIONS
        listed.append(Device(name, precisions, present=present, reason=reason, accelerator=name.startswith(("GPU", "NPU"))))
    return BackendInfo(
        name=NAME,
        version=__version__,
        description="OpenVINO: optimum-intel + NNCF weight compression, openvino-genai LLMPipeline (CPU, Intel GPU, NPU)",
        devices=tuple(listed),
        default_precision="int4",
        capabilities=Capabilities(
            streaming=True, native_stop_strings=True, sampling=True, seed_determinism=True,
            repetition_penalty=True, exact_precisions=("fp32", "fp16"), prefix_cache=True, validates_inputs=True,
            longrope_reencode=True,  # a second run from the whole sequence at the crossing (not under a constraint)
            constraints=KINDS,  # OpenVINO GenAI's StructuredOutputConfig (XGrammar)
        ),
        priority=20,
        runtime_versions=_runtime_versions(),
        options=dict(HELP),
        option_pattern=UPPERCASE,  # OpenVINO properties, passed to the runtime
        quantize_options=tuple(QUANTIZE_OPTIONS),
    )


def _check_target(precision: str, device: str) -> None:
    info = aipc_backend_info()
    dev = info.device(device)
    if dev is None:
        raise UnsupportedDeviceError(f"OpenVINO has no device {device!r} (it knows: {', '.join(DEVICES)})")
    if precision not in dev.precisions:
        raise UnsupportedPrecisionError(f"OpenVINO has no {precision} on {dev.name} (it has: {', '.join(dev.precisions)})")


@hookimpl
def aipc_quantize(request):
    from .options import plan_quantization

    _check_target(request.precision, request.device)
    plan = plan_quantization(request.precision, request.device, dict(request.options), Path(request.source_dir))
    for note in plan.notes:
        request.progress(note)
    from aipc_openvino_common.export import calibration

    from . import export

    started = time.perf_counter()
    data = None
    if plan.dataset and plan.weight_format == "int4":
        data = calibration(plan.dataset, Path(request.source_dir), plan.num_samples, request.trust_remote_code,
                           request.progress)
    figures = export.export(request.source_dir, request.output_dir, plan, request.trust_remote_code, request.progress,
                            data)
    options = plan.record()
    if data is not None:
        options["calibration"] = data.record
    options["quantize_seconds"] = round(time.perf_counter() - started, 1)
    return request.manifest(options=options, versions=export.runtime_versions())


@hookimpl
def aipc_load(request):
    from aipc_openvino_common.export import context_of

    from .options import runtime_config
    from .runtime import Pipeline

    device = request.device or "CPU"
    _check_target(request.manifest.precision, device)
    config = runtime_config(dict(request.options), device, request.cache_dir, request.manifest.precision)
    pipeline = Pipeline(Path(request.artifact_dir), device, config, request.cache_slots)
    return LoadedModel(runtime=pipeline, context_length=context_of(request.artifact_dir, request.manifest.versions),
                       extra={"config": config, "device": device, "cache_slots": len(pipeline.slots.slots)})


@hookimpl
def aipc_generate(model, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    from .runtime import generate

    return generate(model, prompt, config)


@hookimpl
def aipc_tokenize(model, text: str) -> list[int]:
    return model.runtime.tokenize(text)


@hookimpl
def aipc_detect_artifact(folder: Path) -> str | None:
    from .runtime import detect

    return detect(folder)


@hookimpl
def aipc_register_commands(cli) -> None:
    import click

    @cli.group(name="openvino")
    def group() -> None:
        """OpenVINO backend tools."""

    @group.command(name="devices")
    def devices_command() -> None:
        """Ask OpenVINO itself which devices it can open (imports openvino; slower than `aipc backends`)."""
        from .runtime import _device_error

        import openvino

        core = openvino.Core()
        click.echo(f"OpenVINO {openvino.__version__}; available: {', '.join(core.available_devices) or 'none'}")
        for name in ("CPU", "GPU", "NPU"):
            reason = _device_error(name)
            click.echo(f"  {name}: {'present' if not reason else 'absent: ' + reason}")
