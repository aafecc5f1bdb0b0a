"""Streaming glue between aipc and OpenVINO GenAI's ``LLMPipeline`` (any device), shared by the
``openvino`` and ``npu`` backends. Imports only aipc, and openvino_genai inside the functions.

- :func:`generation_config`: an ``openvino_genai.GenerationConfig`` with every field set from
  aipc's config, so the model's own ``generation_config.json`` cannot change what the user asked;
  the prompt arrives templated, so ``apply_chat_template`` is off and the prompt is tokenized
  with ``add_special_tokens=False`` (no second BOS).
- :func:`stream`: runs ``generate`` in a thread and yields :class:`aipc.types.Chunk` per token;
  closing the iterator makes the streamer return ``StreamingStatus.CANCEL``, which stops the
  runtime at its next token, and waits for it.
"""

from __future__ import annotations

import contextlib
import random
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from aipc.errors import BackendError
from aipc.streaming import hf_decoder, threaded_stream
from aipc.types import Chunk, GenerationConfig


class PipelineText:
    """Text in and out of a loaded ``LLMPipeline``, for the backends' pipeline wrappers: call
    :meth:`use_tokenizer` once the pipeline is loaded."""

    def use_tokenizer(self, pipe, folder: Path) -> None:
        self.tokenizer = pipe.get_tokenizer()
        # Streaming decodes every token while the pipeline computes the next one. OpenVINO's
        # detokenizer is a model inferred on the CPU (~40 us a call) and slowed SmolLM2 int4
        # decoding by 6% (1 thread: 133.5 against 141.4 tok/s for the same stream without it);
        # the tokenizers library reads the same tokenizer.json in ~1 us.
        self.stream_decode = hf_decoder(folder) or self.decode

    def encode(self, text: str):
        """The prompt as LLMPipeline takes it: no special tokens added (the template has them)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def tokenize(self, text: str) -> list[int]:
        return [int(i) for i in self.encode(text).input_ids.data.reshape(-1)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def first_line(error: BaseException) -> str:
    """OpenVINO's messages nest "Exception from src/...cpp:NN:" lines; the last one says why."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith("Exception from ")]
    return ((meaningful or lines)[-1] if lines else type(error).__name__)[:300]


def eos_ids(pipe) -> tuple[int | None, set[int]]:
    """The model's eos id and every id that ends generation (generation_config.json's list)."""
    base = pipe.get_generation_config()
    eos = int(base.eos_token_id) if base.eos_token_id is not None and base.eos_token_id >= 0 else None
    ids = {int(i) for i in (base.stop_token_ids or ())}
    if eos is not None:
        ids.add(eos)
    return eos, ids


def generation_config(config: GenerationConfig, eos: tuple[int | None, set[int]], max_new_tokens: int | None = None,
                      native_stop_strings: bool = True):
    """``eos`` is what :func:`eos_ids` returns for the pipeline. With ``native_stop_strings``
    False the runtime is not told the stop strings: the core finds them in the streamed text and
    closes the stream, which cancels the runtime."""
    import openvino_genai

    gc = openvino_genai.GenerationConfig()
    eos_id, stop_ids = eos
    if eos_id is not None:
        gc.eos_token_id = eos_id
    if stop_ids:
        gc.stop_token_ids = set(stop_ids)
    gc.max_new_tokens = max_new_tokens or config.max_new_tokens
    gc.ignore_eos = config.ignore_eos
    if config.ignore_eos:
        # ignore_eos alone lets LLMPipeline pick EOS and go on past it; the reference (and what
        # a benchmark wants) makes EOS impossible instead, as min_new_tokens does.
        gc.min_new_tokens = gc.max_new_tokens
    gc.apply_chat_template = False
    gc.repetition_penalty = config.repetition_penalty
    gc.num_beams = 1
    if config.stop and native_stop_strings:
        gc.stop_strings = set(config.stop)
        # stream the stop string too: the core cuts the text there; without it the runtime drops
        # tokens it may already have streamed in part
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


def perf_figures(result) -> dict[str, Any]:
    """LLMPipeline's own metrics of one generate call (its ``perf_metrics``), as plain numbers."""
    metrics = result.perf_metrics
    return {
        "ttft_ms": metrics.get_ttft().mean, "tpot_ms": metrics.get_tpot().mean,
        "throughput_tok_s": metrics.get_throughput().mean,
        "generated_tokens": metrics.get_num_generated_tokens(), "input_tokens": metrics.get_num_input_tokens(),
    }


def stream(run: Callable[[Any], Any], decode: Callable[[list[int]], str], *, lock: threading.Lock | None = None,
           on_done: Callable[[Any], None] | None = None, map_error: Callable[[BaseException], BaseException] | None = None,
           ) -> Iterator[Chunk]:
    """Call ``run(streamer)`` (a ``pipe.generate(inputs, config, streamer)``) in the core's
    threaded_stream; the streamer returns CANCEL once the consumer has closed the stream.
    ``on_done(result)`` gets the result (perf metrics); ``map_error`` turns the runtime's errors
    into aipc errors."""
    import openvino_genai

    def work(emit) -> None:
        class Streamer(openvino_genai.StreamerBase):
            def write(self, token):
                going = emit([token] if isinstance(token, int) else token)
                return openvino_genai.StreamingStatus.RUNNING if going else openvino_genai.StreamingStatus.CANCEL

            def end(self):
                pass

        with lock if lock is not None else contextlib.nullcontext():
            result = run(Streamer())
        if on_done is not None:
            on_done(result)

    def translate(error: BaseException) -> BaseException:
        if map_error is not None:
            return map_error(error)
        if isinstance(error, RuntimeError):
            return BackendError(f"OpenVINO GenAI generation failed: {first_line(error)}")
        return error

    return threaded_stream(work, decode, translate)
