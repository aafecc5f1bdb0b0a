"""The default engine: OpenVINO GenAI's ``LLMPipeline`` on the ``NPU`` device.

Imports ``openvino`` / ``openvino_genai`` only (no optimum-intel, transformers or torch).

Devices:

- ``NPU``: ``LLMPipeline(ir_dir, "NPU", MAX_PROMPT_LEN=..., MIN_RESPONSE_LEN=..., CACHE_DIR=...)``,
  only when ``openvino.Core().available_devices`` lists ``NPU``; otherwise BackendUnavailableError
  "no NPU on this machine" with OpenVINO's reason. No fallback.
- ``NPU-EMU`` (``AIPC_NPU_EMULATE=1``): the same NPU pipeline with ``NPUW_DEVICES=CPU`` and
  ``NPUW_ONLINE_PIPELINE=NONE`` (as OpenVINO GenAI's own tests run it without an NPU): NPUW, the
  NPU plugin's LLM layer, reshapes the model to static prompt/KV shapes, pads the prompt and
  runs the same prefill/generate split, with the CPU plugin underneath. The CPU sub-device
  computes in f32 (``INFERENCE_PRECISION_HINT=f32``): on CPUs with bf16 OpenVINO defaults to bf16
  and greedy tokens then drift from the CPU pipeline's after a few steps. For the same reason the
  stand-in compiles without ``CACHE_DIR`` unless given one: a blob NPUW imports from the cache
  runs in the CPU's default precision again. So the stand-in checks the NPU pipeline's logic
  (static shapes, prompt padding, KV cache), not the NPU's fp16 arithmetic, and its timings are
  CPU timings.
- ``AUTO``: ``NPU`` when OpenVINO lists it, else the plain CPU ``LLMPipeline``: the one fallback,
  and only when asked for by name.

Constrained output: OpenVINO GenAI's ``StructuredOutputConfig`` (XGrammar), set by the shared
:func:`aipc_openvino_common.genai.generation_config`; the NPU pipeline masks the logits it gets
back from the device on the CPU, as the CPU pipeline does (run on NPU-EMU only).

NPU limits (compiled in): one prompt at a time (batch 1), greedy or multinomial decoding (no
beam search), prompts up to ``MAX_PROMPT_LEN`` tokens, and a KV cache of ``MAX_PROMPT_LEN +
MIN_RESPONSE_LEN`` tokens (the pipeline stops by itself when it is full). They are checked here
before the runtime is called, with errors that name the option to change.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from aipc.errors import (
    BackendError,
    BackendUnavailableError,
    InvalidConfigError,
    InvalidModelError,
    PromptTooLongError,
)
from aipc.artifacts import longrope_original
from aipc.types import Chunk, GenerationConfig, Manifest
from aipc_openvino_common import genai
from aipc_openvino_common.export import context_of

from .devices import AUTO, EMULATED, NPU

REQUIRED = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_tokenizer.bin",
            "openvino_detokenizer.xml", "openvino_detokenizer.bin")
#: What turns the NPU pipeline into its CPU stand-in.
EMULATION = {"NPUW_DEVICES": "CPU", "NPUW_ONLINE_PIPELINE": "NONE", "INFERENCE_PRECISION_HINT": "f32"}
NOT_NPU_PERFORMANCE = "CPU stand-in for the NPU (NPUW_DEVICES=CPU): these are CPU timings, not NPU performance"


def check_files(folder: Path) -> None:
    missing = [name for name in REQUIRED if not (Path(folder) / name).is_file()]
    if missing:
        raise InvalidModelError(f"{folder} is missing {', '.join(missing)}")
    empty = [name for name in REQUIRED if (Path(folder) / name).stat().st_size == 0]
    if empty:
        raise InvalidModelError(f"{folder}: {', '.join(empty)} empty")


def openvino_npu_reason() -> str | None:
    """OpenVINO's own word on the NPU: None when ``available_devices`` lists it, else why not."""
    import openvino

    core = openvino.Core()
    try:
        if "NPU" in {d.split(".")[0] for d in core.available_devices}:
            return None
        core.get_versions("NPU")  # raises with the plugin's load error, if that is the cause
    except RuntimeError as error:
        return genai.first_line(error)
    return f"OpenVINO lists no NPU device (available: {', '.join(core.available_devices) or 'none'})"


class NpuPipeline(genai.PipelineText):
    """A loaded LLMPipeline plus the limits it was compiled with."""

    def __init__(self, folder: Path, device: str, config: dict[str, Any], threads: int | None = None,
                 progress=lambda *a, **k: None) -> None:
        import openvino_genai

        self.folder = Path(folder)
        self.versions = Manifest.read(self.folder).versions  # what exported it: see context_of
        self.requested = device
        self.lock = threading.Lock()
        self.perf: dict[str, Any] = {}
        check_files(self.folder)
        self.max_prompt = int(config["MAX_PROMPT_LEN"])
        self.kv_total = self.max_prompt + int(config["MIN_RESPONSE_LEN"])
        if device == NPU:
            reason = openvino_npu_reason()
            if reason:
                raise BackendUnavailableError(f"no NPU on this machine: {reason}")
            runtime_device, properties, self.emulated = "NPU", dict(config), False
        elif device == EMULATED:
            runtime_device, properties, self.emulated = "NPU", {**config, **EMULATION}, True
            if threads:
                properties.setdefault("INFERENCE_NUM_THREADS", threads)
        elif device == AUTO:
            if openvino_npu_reason() is None:
                runtime_device, properties, self.emulated = "NPU", dict(config), False
            else:
                progress("AUTO: no NPU on this machine, running on the CPU (asked for with --device AUTO)")
                runtime_device, self.emulated = "CPU", False
                properties = {k: v for k, v in config.items() if k == "CACHE_DIR" or k.startswith(("INFERENCE_", "KV_CACHE"))}
                properties.setdefault("PERFORMANCE_HINT", "LATENCY")
                if threads:
                    properties.setdefault("INFERENCE_NUM_THREADS", threads)
                self.max_prompt = self.kv_total = None  # no NPU limits on the CPU
        else:
            raise BackendUnavailableError(f"unknown NPU device {device!r}")
        self.device = runtime_device
        self.properties = properties
        try:
            self.pipe = openvino_genai.LLMPipeline(str(self.folder), runtime_device, properties)
        except RuntimeError as error:
            message = genai.first_line(error)
            lowered = message.lower()
            if "property" in lowered or "option" in lowered or "config" in lowered:
                raise InvalidConfigError(f"the NPU pipeline rejected its options: {message}") from None
            raise InvalidModelError(f"cannot load {self.folder} on {runtime_device}: {message}") from None
        self.use_tokenizer(self.pipe, self.folder)
        self.eos = genai.eos_ids(self.pipe)
        self.original = longrope_original(self.folder)  # a LongRoPE model's original context

    def reencodes(self, config: GenerationConfig) -> int | None:
        """The original context of a LongRoPE model whose crossing this pipeline re-encodes
        (:func:`aipc_openvino_common.genai.crossing_runs`), else None: not under a constraint (a new
        run would start the grammar again), nor when the whole sequence at the crossing is longer than
        the prompts the NPU pipeline was compiled for (it then keeps its KV cache across)."""
        if config.constraint is not None or not self.original:
            return None
        return self.original if self.max_prompt is None or self.original < self.max_prompt else None

    @property
    def context_length(self) -> int | None:
        limits = [n for n in (context_of(self.folder, self.versions), self.kv_total) if n]
        return min(limits) if limits else None

    def check(self, prompt_tokens: int, batch: int = 1, num_beams: int = 1) -> None:
        """The NPU's limits, checked before the runtime is called."""
        if self.device != "NPU":
            return
        if batch != 1:
            raise InvalidConfigError(f"the NPU runs one prompt at a time (batch size 1), got {batch} prompts")
        if num_beams != 1:
            raise InvalidConfigError(f"the NPU pipeline has no beam search (greedy or sampling only), got num_beams={num_beams}")
        if prompt_tokens > self.max_prompt:
            raise PromptTooLongError(
                f"the prompt has {prompt_tokens} tokens; the NPU pipeline was compiled for at most "
                f"{self.max_prompt} (raise it with -o MAX_PROMPT_LEN=N; it costs NPU memory and compile time)"
            )


def _map_error(error: BaseException) -> BaseException:
    if isinstance(error, RuntimeError):
        message = genai.first_line(error)
        lowered = message.lower()
        if "batch size" in lowered or "greedy and multinomial" in lowered:
            return InvalidConfigError(f"the NPU pipeline refused: {message}")
        if "max_prompt_len" in lowered or "prompt" in lowered and "long" in lowered:
            return PromptTooLongError(f"the NPU pipeline refused the prompt: {message}")
        return BackendError(f"OpenVINO GenAI generation failed: {message}")
    return error


def generate(loaded, prompt: str | Sequence[str], config: GenerationConfig, num_beams: int = 1) -> Iterator[Chunk]:
    """Stream the continuation of ``prompt`` (final text: templated by the core).

    ``prompt`` may be a list and ``num_beams`` > 1 only so that callers get the NPU's clear
    refusal; aipc itself sends one prompt and never asks for beams.
    """
    pipeline: NpuPipeline = loaded.runtime
    if pipeline is None:
        raise BackendError("the model was closed")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise InvalidConfigError("no prompt given")
    ids = pipeline.tokenize(prompts[0])
    prompt_tokens = len(ids)
    pipeline.check(prompt_tokens, batch=len(prompts), num_beams=num_beams)
    limit = loaded.context_length
    if limit and prompt_tokens >= limit:
        raise PromptTooLongError(f"the prompt has {prompt_tokens} tokens; the model's context here is {limit}")
    max_new = config.max_new_tokens
    if limit:
        max_new = min(max_new, limit - prompt_tokens)

    def run(streamer):
        def once(prompt_ids: list[int], new_tokens: int):
            # Stop strings are left to the core (capabilities.native_stop_strings False): measured on
            # the NPU pipeline, its own stop-string check ends the stream before the text that holds
            # the stop string has been streamed when the output has incomplete UTF-8 sequences.
            gen_config = genai.generation_config(config, pipeline.eos, new_tokens, native_stop_strings=False)
            return pipeline.pipe.generate(genai.ids_tensor(prompt_ids), gen_config, streamer)

        return genai.crossing_runs(once, ids, max_new, pipeline.reencodes(config), streamer,
                                   genai.ending_ids(config, pipeline.eos))

    def done(result) -> None:
        pipeline.perf = {**genai.perf_figures(result), "device": pipeline.device}
        if pipeline.emulated:
            pipeline.perf["note"] = NOT_NPU_PERFORMANCE
        loaded.extra["perf"] = pipeline.perf

    return genai.stream(run, pipeline.stream_decode, lock=pipeline.lock, on_done=done, map_error=_map_error,
                        constraint=config.constraint)


def detect(folder: Path) -> str | None:
    """Never claims foreign folders: an optimum-cli OpenVINO export is the OpenVINO backend's to
    recognise. (Its NPU-ready exports load there with ``--device NPU``.)"""
    return None
