"""The ``npu`` backend's hooks (entry point ``aipc_npu.plugin``).

Importing this module is cheap: the runtimes are imported inside the hook bodies, through
:mod:`aipc_openvino_common.export` (quantize), :mod:`aipc_npu.genai_engine` (default engine) and
:mod:`aipc_npu.library_engine` (library engine).

The engine is chosen by ``-o engine=openvino|library`` (default: ``AIPC_NPU_ENGINE``, else
``openvino``) when quantizing; it is recorded in the artifact's manifest, and loading follows the
manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

from aipc import hookimpl
from aipc.artifacts import context_length, longrope_original
from aipc.plugins import package_versions
from aipc.errors import BackendUnavailableError, InvalidConfigError, UnsupportedDeviceError, UnsupportedPrecisionError
from aipc.guidance import KINDS
from aipc.options import UPPERCASE
from aipc.types import BackendInfo, Capabilities, Chunk, Device, GenerationConfig, LoadedModel

from . import __version__, devices, options as opts
from .devices import AUTO, EMULATED, NPU, PRECISIONS

NAME = "npu"
DEVICES = (NPU, EMULATED, AUTO)


def _versions(engine: str) -> dict[str, str]:
    names = ("openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "nncf") if engine == "openvino" \
        else ("intel-npu-acceleration-library", "torch", "transformers", "neural-compressor")
    return package_versions(*names)


def _device(name: str, precisions, present: bool, reason: str) -> Device:
    kwargs = {}
    if name == AUTO and devices.auto_supported():
        kwargs["auto_select"] = False  # used only when named: never the default
    return Device(name, precisions, present=present, reason=reason, accelerator=(name == NPU), **kwargs)


@hookimpl
def aipc_backend_info() -> BackendInfo:
    try:
        engine = opts.engine({})
    except InvalidConfigError:
        engine = "openvino"  # a bad AIPC_NPU_ENGINE is reported when quantizing / loading
    probed = devices.probe(engine)
    listed = tuple(_device(name, PRECISIONS[engine], *probed[name]) for name in DEVICES)
    # Nothing is claimed exact (capabilities.exact_precisions). Measured on the CPU stand-in: fp16
    # greedy tokens leave the fp32 reference's after 7 of 16 on SmolLM2 and 14 of 16 on the tiny
    # Phi-3 (fp16 weights; the plain CPU pipeline on the same IR gives the same tokens as the
    # stand-in). A real NPU computes activations and the KV cache in fp16, and the library's CPU
    # fallback computes in bf16 where the CPU has it. Both engines are judged on SmolLM2's answers.
    exact: tuple[str, ...] = ()
    # No prefix_cache (issue 12) for the openvino engine: OpenVINO GenAI's NPU pipeline prefills the
    # whole prompt on every call (in chat mode too: m_use_full_chat_history), and NPUW's own prefix
    # cache (opt-in, README) does not say how many tokens it reused. See plugins/npu/README.md.
    engines = ", ".join(
        f"{name}{' [default]' if name == engine else ''}{'' if devices.runtime(name)[0] else ' (not installed)'}"
        for name in devices.ENGINES
    )
    description = f"Intel NPU: OpenVINO GenAI LLMPipeline on NPU, or the Intel NPU Acceleration Library (-o engine=; engines: {engines})"
    return BackendInfo(
        name=NAME,
        version=__version__,
        description=description,
        devices=listed,
        default_precision="int4",
        capabilities=Capabilities(
            streaming=True, native_stop_strings=False, repetition_penalty=True, validates_inputs=True,
            # library engine: sampling through the library's compiled model does not reproduce its greedy
            # tokens at top_k=1 (measured: the first token differs), so it is not claimed there (README)
            sampling=engine != "library", seed_determinism=engine != "library",
            max_prompt_tokens=opts.DEFAULT_MAX_PROMPT_LEN, max_batch_size=1, beam_search=False,
            exact_precisions=exact,
            # library: transformers re-encodes; openvino: a second run from the whole sequence (not under a
            # constraint, nor with MAX_PROMPT_LEN at or below the original context: README)
            longrope_reencode=True,
            prefix_cache=engine == "library",  # the library worker keeps DynamicCaches (library_worker.py)
            # library: llguidance in the worker (aipc.guidance); openvino: StructuredOutputConfig
            # (XGrammar) in the NPU pipeline (aipc_openvino_common.genai)
            constraints=KINDS,
        ),
        priority=40,
        runtime_versions={"engine": engine, **_versions(engine)},
        options=dict(opts.HELP),
        option_pattern=UPPERCASE,  # NPU pipeline properties, passed through
        quantize_options=tuple(opts.QUANTIZE_OPTIONS),
        artifact_variant=engine,  # AIPC_NPU_ENGINE picks the engine: artifacts must not collide
    )


def _check_target(engine: str, precision: str, device: str) -> None:
    if device not in DEVICES:
        raise UnsupportedDeviceError(f"the npu backend has no device {device!r} (it knows: {', '.join(DEVICES)})")
    if precision not in PRECISIONS[engine]:
        raise UnsupportedPrecisionError(
            f"the npu backend ({engine} engine) has no {precision} (it has: {', '.join(PRECISIONS[engine])}; "
            "the NPU computes in fp16)"
        )


@hookimpl
def aipc_quantize(request):
    options = dict(request.options)
    opts.check_known(options)
    engine = opts.engine(options)
    _check_target(engine, request.precision, request.device)
    present, reason = devices.runtime(engine)
    if engine == "library":
        from . import library_engine

        if any(k in options for k in (*opts.INT4_OPTIONS, "sym")):
            raise InvalidConfigError(f"{' / '.join((*opts.INT4_OPTIONS, 'sym'))} apply to the openvino engine only")
        figures = library_engine.write_artifact(request.source_dir, request.output_dir)
        params = opts.count_parameters(Path(request.source_dir))
        if request.precision == "int4" and params and params < 1_000_000_000:
            # measured: SmolLM2-135M at the library's int4 agrees with the reference's first answer
            # token on 0 of 4 prompts and no longer answers "Paris"
            request.progress("warning: the library's int4 is channel-wise round-to-nearest (it has no group size); "
                             f"on a model this small ({params / 1e6:.0f}M parameters) it loses answers: "
                             "use int8, or the openvino engine's group-wise int4")
        request.progress("Linked the Hugging Face folder; the library compiles and quantizes it when loading")
        return request.manifest(options={"engine": "library", "dtype": request.precision, **figures},
                                versions=library_engine.runtime_versions())
    if not present:
        raise BackendUnavailableError(f"the openvino engine cannot quantize here: {reason}")
    plan = opts.plan_export(request.precision, options, Path(request.source_dir))
    for note in plan.notes:
        request.progress(f"warning: {note}")
    from aipc_openvino_common import export

    started = time.perf_counter()
    data = None
    if plan.dataset and plan.weight_format == "int4":
        data = export.calibration(plan.dataset, Path(request.source_dir), plan.num_samples, request.trust_remote_code,
                                  request.progress)

    def weight_config():
        return export.weight_config(plan.weight_format, bool(plan.sym), data, Path(request.source_dir),
                                    **plan.int4_config())

    export.export(request.source_dir, request.output_dir, plan.weight_format, weight_config,
                  trust_remote_code=request.trust_remote_code, progress=request.progress,
                  recipe="NPU recipe", import_hint=": pip install 'aipc-npu[export]'")
    record = plan.record()
    if data is not None:
        record["calibration"] = data.record
    record["quantize_seconds"] = round(time.perf_counter() - started, 1)
    return request.manifest(options=record, versions=export.runtime_versions())


def _engine_of(manifest) -> str:
    engine = (manifest.options or {}).get("engine", "openvino")
    return engine if engine in devices.ENGINES else "openvino"


@hookimpl
def aipc_load(request):
    options = dict(request.options)
    opts.check_known(options)
    engine = _engine_of(request.manifest)
    asked = options.get("engine")
    if asked and asked.strip().lower() != engine:
        raise InvalidConfigError(f"this artifact was made by the {engine} engine, not {asked}")
    device = request.device or NPU
    _check_target(engine, request.manifest.precision, device)
    present, reason = devices.runtime(engine)
    if not present:
        raise BackendUnavailableError(f"this artifact needs the npu backend's {engine} engine: {reason}")
    threads = opts.threads(options)
    if engine == "library":
        from . import library_engine

        model = library_engine.load(Path(request.artifact_dir), request.manifest.precision, device,
                                    Path(request.cache_dir), threads, request.progress, request.cache_slots)
        return LoadedModel(runtime=model, context_length=context_length(request.artifact_dir),
                           extra={"engine": engine, "device": device, "emulated": model.emulated, "info": model.info})
    from .genai_engine import NpuPipeline

    config = opts.pipeline_config(options, Path(request.cache_dir))
    opts.without_chunked_prefill(config, longrope_original(request.artifact_dir))
    if device == EMULATED and "CACHE_DIR" not in options:
        # measured: a blob NPUW imports from CACHE_DIR runs its CPU sub-device in the CPU's default
        # precision (bf16 here), not the stand-in's f32, and tokens drift; compiling on the CPU
        # takes under a second for the tiny model anyway
        config.pop("CACHE_DIR")
    pipeline = NpuPipeline(Path(request.artifact_dir), device, config, threads, request.progress)
    return LoadedModel(runtime=pipeline, context_length=pipeline.context_length,
                       extra={"engine": engine, "device": device, "runtime_device": pipeline.device,
                              "emulated": pipeline.emulated, "config": pipeline.properties})


@hookimpl
def aipc_generate(model, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    if model.runtime is None:
        from aipc.errors import BackendError

        raise BackendError("the model was closed")
    if model.extra.get("engine") == "library":  # the backend's declared prompt cap, as on the NPU pipeline
        return model.runtime.generate(prompt, config, model.context_length, model, opts.DEFAULT_MAX_PROMPT_LEN)
    from .genai_engine import generate

    return generate(model, prompt, config)


@hookimpl
def aipc_tokenize(model, text: str) -> list[int]:
    return model.runtime.tokenize(text)


@hookimpl
def aipc_register_commands(cli) -> None:
    import click

    @cli.group(name="npu")
    def group() -> None:
        """Intel NPU backend tools."""

    @group.command(name="devices")
    def devices_command() -> None:
        """Show the cheap probes, then ask OpenVINO itself (imports openvino)."""
        for engine in devices.ENGINES:
            for name, (present, reason) in devices.probe(engine).items():
                click.echo(f"{engine:9} {name:8} {'present' if present else 'absent: ' + reason}")
        if devices.runtime("openvino")[0]:
            from .genai_engine import openvino_npu_reason

            reason = openvino_npu_reason()
            click.echo(f"OpenVINO: {'NPU present' if reason is None else reason}")
