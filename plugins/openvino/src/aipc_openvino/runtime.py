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
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any, Iterator

from aipc.errors import BackendError, BackendUnavailableError, InvalidConfigError, InvalidModelError, PromptTooLongError
from aipc.streaming import hf_decoder, threaded_stream
from aipc.types import Chunk, GenerationConfig

REQUIRED = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_tokenizer.bin",
            "openvino_detokenizer.xml", "openvino_detokenizer.bin")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    # OpenVINO prefixes every level with "Exception from src/...cpp:NN:"; the last line says why.
    meaningful = [line for line in lines if not line.startswith("Exception from ")]
    return ((meaningful or lines)[-1] if lines else type(error).__name__)[:300]


def context_length(folder: Path) -> int | None:
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config)
    value = config.get("max_position_embeddings") or config.get("n_positions") or config.get("seq_length")
    if config.get("model_type") == "phi3" and config.get("original_max_position_embeddings"):
        value = config["original_max_position_embeddings"]  # as optimum-intel exports Phi-3
    return int(value) if value else None


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
        return _first_line(error)
    return None


class Pipeline:
    """A loaded LLMPipeline and the tokenizer inside it."""

    def __init__(self, folder: Path, device: str, config: dict[str, Any]) -> None:
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
            message = _first_line(error)
            lowered = message.lower()
            if "property" in lowered or ("config" in lowered and "key" in lowered):
                raise InvalidConfigError(f"OpenVINO rejected the runtime options on {device}: {message}") from None
            raise InvalidModelError(f"cannot load {self.folder} on {device}: {message}") from None
        self.tokenizer = self.pipe.get_tokenizer()
        self.base_config = self.pipe.get_generation_config()
        # Streaming decodes every token while the pipeline computes the next one. OpenVINO's
        # detokenizer is a model inferred on the CPU (~40 us a call) and slowed SmolLM2 int4
        # decoding by 6% (1 thread: 133.5 against 141.4 tok/s for the same stream without it);
        # the tokenizers library reads the same tokenizer.json in ~1 us.
        self.stream_decode = hf_decoder(self.folder) or self.decode

    def encode(self, text: str):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def tokenize(self, text: str) -> list[int]:
        return [int(i) for i in self.encode(text).input_ids.data.reshape(-1)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generation_config(self, config: GenerationConfig):
        """LLMPipeline's config for an aipc config: every field set, so the model's own
        generation_config.json cannot change what the user asked for."""
        import openvino_genai

        gc = openvino_genai.GenerationConfig()
        eos = self.base_config.eos_token_id
        if eos is not None and eos >= 0:
            gc.eos_token_id = eos
        stop_ids = set(self.base_config.stop_token_ids or ())  # generation_config.json's eos list
        if eos is not None and eos >= 0:
            stop_ids.add(eos)
        gc.stop_token_ids = stop_ids
        gc.max_new_tokens = config.max_new_tokens
        gc.ignore_eos = config.ignore_eos
        if config.ignore_eos:
            # ignore_eos alone lets LLMPipeline pick EOS and go on past it; the reference (and what
            # a benchmark wants) makes EOS impossible instead, as min_new_tokens does.
            gc.min_new_tokens = config.max_new_tokens
        gc.apply_chat_template = False
        gc.repetition_penalty = config.repetition_penalty
        gc.num_beams = 1
        if config.stop:
            gc.stop_strings = set(config.stop)
            # Stream the stop string too: LLMPipeline would otherwise drop the tokens matching it
            # while having streamed the first of them already, leaving a fragment the core cannot
            # recognise. The core cuts the text at the stop string.
            gc.include_stop_str_in_output = True
        if config.sampling:
            gc.do_sample = True
            gc.temperature = config.temperature
            gc.top_p = config.top_p
            if config.top_k:
                gc.top_k = config.top_k
            gc.rng_seed = config.seed if config.seed is not None else random.randrange(1 << 31)
        else:
            gc.do_sample = False
        return gc


def generate(loaded, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    """Run LLMPipeline.generate in a thread; yield Chunks as token ids arrive."""
    pipeline: Pipeline = loaded.runtime
    if pipeline is None:
        raise BackendError("the model was closed")
    inputs = pipeline.encode(prompt)
    prompt_tokens = int(inputs.input_ids.get_shape()[-1])
    limit = loaded.context_length
    if limit and prompt_tokens >= limit:
        raise PromptTooLongError(f"the prompt has {prompt_tokens} tokens; the model's context is {limit}")
    gen_config = pipeline.generation_config(config)
    if limit and prompt_tokens + gen_config.max_new_tokens > limit:
        gen_config.max_new_tokens = limit - prompt_tokens
    return _stream(pipeline, loaded, inputs, gen_config)


def _stream(pipeline: Pipeline, loaded, inputs, gen_config) -> Iterator[Chunk]:
    """LLMPipeline.generate blocks: the core's threaded_stream runs it in a thread, and the
    streamer returns CANCEL once the consumer has closed the stream."""
    import openvino_genai

    def run(emit) -> None:
        class Streamer(openvino_genai.StreamerBase):
            def write(self, token):
                going = emit([token] if isinstance(token, int) else token)
                return openvino_genai.StreamingStatus.RUNNING if going else openvino_genai.StreamingStatus.CANCEL

            def end(self):
                pass

        with pipeline.lock:
            result = pipeline.pipe.generate(inputs, gen_config, Streamer())
        metrics = result.perf_metrics
        pipeline.perf = {
            "ttft_ms": metrics.get_ttft().mean, "tpot_ms": metrics.get_tpot().mean,
            "throughput_tok_s": metrics.get_throughput().mean,
            "generated_tokens": metrics.get_num_generated_tokens(), "input_tokens": metrics.get_num_input_tokens(),
        }
        loaded.extra["perf"] = pipeline.perf

    def translate(error: BaseException) -> BaseException:
        if isinstance(error, RuntimeError):
            return BackendError(f"OpenVINO generation failed: {_first_line(error)}")
        return error

    return threaded_stream(run, pipeline.stream_decode, translate)


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
