"""Load and generate with openvino-genai's ``LLMPipeline`` (C++ generation loop).

Imports ``openvino_genai`` (and the small ``tokenizers`` library to decode the stream): no
optimum-intel, no transformers, no torch. optimum-intel's
``OVModelForCausalLM`` is not used at all at generation time: LLMPipeline serves every case
this backend offers (greedy, sampling with a seed, stop strings, repetition penalty,
streaming with cancellation) and is faster (SmolLM2 int4, 1 thread: TTFT 127 ms / 22.5 tok/s
against 476 ms / 16.6 tok/s).

Templating happens once, in the core: the prompt arrives templated, is tokenized here with
``add_special_tokens=False`` (the template already holds any BOS) and handed to LLMPipeline as
token ids, so LLMPipeline neither applies the chat template again nor adds a second BOS.

Prefix reuse (``cache_slots`` >= 1): LLMPipeline's chat mode fed token ids keeps the KV cache
between calls and trims it to the prompt's first differing token itself
(:class:`aipc_openvino_common.genai.ChatReuse`). One KV cache per pipeline: ``cache_slots``
pipelines at most, the second and later ones made when a conversation needs one.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterator

from aipc.errors import BackendError, BackendUnavailableError, InvalidConfigError, InvalidModelError, PromptTooLongError
from aipc.artifacts import longrope_original
from aipc.prefix import PrefixCache
from aipc.types import Chunk, GenerationConfig
from aipc_openvino_common.genai import (ChatReuse, PipelineText, crossing_runs, ending_ids, eos_ids, first_line,
                                        generation_config, perf_figures, stream)

REQUIRED = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_tokenizer.bin",
            "openvino_detokenizer.xml", "openvino_detokenizer.bin")


def check_files(folder: Path) -> None:
    folder = Path(folder)
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        hint = ""
        if "openvino_tokenizer.xml" in missing and "openvino_model.xml" not in missing:
            hint = (" (an export made with optimum-intel's Python API lacks the OpenVINO tokenizer: use "
                    "`optimum-cli export openvino`, or `convert_tokenizer` from openvino-tokenizers)")
        raise InvalidModelError(f"{folder} is missing {', '.join(missing)}{hint}")
    for name in REQUIRED:
        if (folder / name).stat().st_size == 0:
            raise InvalidModelError(f"{folder / name} is empty")


def _device_error(device: str) -> str | None:
    """OpenVINO's own reason why ``device`` cannot run here, or None if it can."""
    import openvino

    core = openvino.Core()
    base = device.split(".")[0].upper()
    if base in ("AUTO", "HETERO", "MULTI"):
        return None
    try:
        if base not in {d.split(".")[0] for d in core.available_devices}:
            core.get_versions(base)  # raises with the plugin's load error
            return f"OpenVINO lists no {base} device here (available: {', '.join(core.available_devices)})"
    except RuntimeError as error:
        return first_line(error)
    return None


class Pipeline(PipelineText):
    """A loaded LLMPipeline and the tokenizer inside it."""

    def __init__(self, folder: Path, device: str, config: dict[str, Any], cache_slots: int = 1) -> None:
        import openvino_genai

        self.folder = Path(folder)
        self.device = device
        self.config = config
        self.lock = threading.Lock()  # one generation at a time per pipeline
        self.perf: dict[str, float] = {}
        check_files(self.folder)
        try:
            self.pipe = openvino_genai.LLMPipeline(str(self.folder), device, **config)
        except RuntimeError as error:
            # Why did it fail? Ask OpenVINO about the device only now (it costs a Core).
            reason = _device_error(device)
            if reason:
                raise BackendUnavailableError(f"OpenVINO cannot use {device}: {reason}") from None
            message = first_line(error)
            lowered = message.lower()
            if "property" in lowered or ("config" in lowered and "key" in lowered):
                raise InvalidConfigError(f"OpenVINO rejected the runtime options on {device}: {message}") from None
            raise InvalidModelError(f"cannot load {self.folder} on {device}: {message}") from None
        self.use_tokenizer(self.pipe, self.folder)
        self.eos = eos_ids(self.pipe)  # the model's eos id and every id that ends generation
        # only the stateful (SDPA) pipeline keeps its KV cache in chat mode: the paged-attention
        # adapter (-o ATTENTION_BACKEND=PA) and the NPU pipeline prefill the whole history anyway
        self.boundary = longrope_original(self.folder)  # a LongRoPE model's original context
        self.reuse = ChatReuse(self.pipe, enabled=cache_slots > 0 and config.get("ATTENTION_BACKEND") == "SDPA",
                               boundary=self.boundary)
        # one KV cache per LLMPipeline: a slot is a pipeline, the 2nd.. made when a conversation needs it
        self.slots = PrefixCache(cache_slots if self.reuse.enabled else 0, self.boundary)

    def choose(self, ids: list[int]) -> tuple[ChatReuse, Any]:
        """The pipeline for a prompt (aipc.prefix's choice: its own conversation's, else a free or
        the least recently used one) and the slot to record its state in. Under the lock."""
        import openvino_genai

        if not self.slots.enabled:
            return self.reuse, None
        kept = {id(slot): slot.state for slot in self.slots.slots}
        slot, _ = self.slots.take(ids)
        reuse = slot.state or kept[id(slot)]  # take() empties an evicted slot: its pipeline is reused
        if reuse is None:
            taken = {id(s.state) for s in self.slots.slots if s.state is not None}
            if id(self.reuse) not in taken:
                reuse = self.reuse
            else:
                pipe = openvino_genai.LLMPipeline(str(self.folder), self.device, **self.config)
                reuse = ChatReuse(pipe, enabled=True, boundary=self.boundary)
        slot.state = reuse
        return reuse, slot


def generate(loaded, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    """Run LLMPipeline.generate in a thread; yield Chunks as token ids arrive."""
    pipeline: Pipeline = loaded.runtime
    if pipeline is None:
        raise BackendError("the model was closed")
    ids = pipeline.tokenize(prompt)
    prompt_tokens = len(ids)
    limit = loaded.context_length
    if limit and prompt_tokens >= limit:
        raise PromptTooLongError(f"the prompt has {prompt_tokens} tokens; the model's context is {limit}")
    max_new = min(config.max_new_tokens, limit - prompt_tokens) if limit else config.max_new_tokens
    # a LongRoPE crossing is re-encoded (crossing_runs), except under a constraint: a new run would
    # start the grammar again on tokens it has matched already
    original = pipeline.boundary if config.constraint is None else None
    stop_ids = ending_ids(config, pipeline.eos)

    chosen: list = []
    sent: list[list[int]] = []  # each run's prompt: the user's, then the whole sequence at a crossing

    def run(streamer):  # under pipeline.lock, in the stream's thread
        reuse, slot = pipeline.choose(ids)
        chosen[:] = [reuse, slot]

        def once(prompt_ids: list[int], new_tokens: int):
            inputs, cached = reuse.inputs(prompt_ids)
            if not sent:
                loaded.cached_tokens = cached
            sent.append(prompt_ids)
            return reuse.pipe.generate(inputs, generation_config(config, pipeline.eos, new_tokens), streamer)

        return crossing_runs(once, ids, max_new, original, streamer, stop_ids)

    def end(result, cancelled: bool) -> None:
        if not chosen:
            return
        reuse, slot = chosen
        reused = reuse.end(sent[-1] if sent else ids, result, cancelled, prompt_tokens)
        if reused is not None and len(sent) == 1:
            loaded.cached_tokens = reused  # the pipeline's own count of what it did not prefill
        if slot is not None:
            slot.hold(reuse, reuse.kv)  # the ids its KV cache holds (at most)

    def done(result) -> None:
        pipeline.perf = loaded.extra["perf"] = perf_figures(result)

    # LLMPipeline.generate blocks: the core's threaded_stream runs it in a thread, and the
    # streamer returns CANCEL once the consumer has closed the stream
    def last(token: int, count: int) -> bool:  # the run's final token (see ChatReuse)
        return pipeline.reuse.enabled and (count >= max_new or token in stop_ids)

    return stream(run, pipeline.stream_decode, lock=pipeline.lock, on_done=done, on_end=end, last=last,
                  constraint=config.constraint)


def detect(folder: Path) -> str | None:
    """The precision of an OpenVINO LLM folder made outside aipc (``optimum-cli export
    openvino``), or None. Reads small files only; imports nothing heavy."""
    folder = Path(folder)
    xml = folder / "openvino_model.xml"
    if not xml.is_file() or not (folder / "openvino_model.bin").is_file():
        return None
    try:
        ov_config = json.loads((folder / "openvino_config.json").read_text())
    except (OSError, ValueError):
        ov_config = {}
    quant = ov_config.get("quantization_config") if isinstance(ov_config, dict) else None
    if isinstance(quant, dict):
        dtype = str(quant.get("dtype") or "").lower()
        if quant.get("bits") == 4 or dtype in ("int4", "nf4", "mxfp4", "cb4"):
            return "int4"
        if quant.get("bits") == 8 or dtype == "int8":
            return "int8"
    return _precision_from_ir(xml)


def _precision_from_ir(xml: Path) -> str | None:
    """Scan the IR's constants: 4-bit -> int4, 8-bit -> int8, f16 -> fp16, else fp32."""
    import re

    try:
        text = xml.read_text(errors="replace")
    except OSError:
        return None
    if "<net " not in text[:2000]:
        return None
    types = set(re.findall(r'type="Const"[^>]*>\s*<data[^>]*element_type="(\w+)"', text))
    if types & {"u4", "i4", "nf4", "f4e2m1"}:
        return "int4"
    if types & {"u8", "i8"}:
        return "int8"
    if "f16" in types:
        return "fp16"
    return "fp32"
