"""Streaming glue between aipc and OpenVINO GenAI's ``LLMPipeline`` (any device), shared by the
``openvino`` and ``npu`` backends. Imports only aipc, and openvino_genai inside the functions.

- :func:`generation_config`: an ``openvino_genai.GenerationConfig`` with every field set from
  aipc's config, so the model's own ``generation_config.json`` cannot change what the user asked;
  the prompt arrives templated, so ``apply_chat_template`` is off and the prompt is tokenized
  with ``add_special_tokens=False`` (no second BOS).
- :func:`stream`: runs ``generate`` in a thread and yields :class:`aipc.types.Chunk` per token;
  closing the iterator makes the streamer return ``StreamingStatus.CANCEL``, which stops the
  runtime at its next token, and waits for it.
- :func:`structured_output`: aipc's :class:`aipc.constraints.Constraint` as OpenVINO GenAI's
  ``StructuredOutputConfig`` (XGrammar masks each step's logits inside ``generate``); the
  grammar is compiled when ``generate`` starts, and what XGrammar refuses there is turned into a
  one-line InvalidConfigError by :func:`constraint_error`.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from aipc.errors import BackendError, InvalidConfigError
from aipc.prefix import common_prefix, same_side
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


def ending_ids(config: GenerationConfig, eos: tuple[int | None, set[int]]) -> set[int]:
    """The ids that end an answer (``eos``: :func:`eos_ids`): none under ``ignore_eos``, which does not
    apply under a constraint (the run ends with the grammar, on a stop id)."""
    return set() if config.ignore_eos and config.constraint is None else eos[1]


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
    # Under a constraint ignore_eos does not apply: once the grammar is complete XGrammar allows
    # only the stop tokens, which min_new_tokens would forbid too; the output ends there.
    gc.ignore_eos = config.ignore_eos and config.constraint is None
    if gc.ignore_eos:
        # ignore_eos alone lets LLMPipeline pick EOS and go on past it; the reference (and what
        # a benchmark wants) makes EOS impossible instead, as min_new_tokens does.
        gc.min_new_tokens = gc.max_new_tokens
    if config.constraint is not None:
        gc.structured_output_config = structured_output(config.constraint)
        if eos_id is not None:
            # XGrammar ends a complete grammar with any of the config's stop_token_ids (measured);
            # the model's EOS alone makes it end as llguidance does (the reference backend, the
            # directml runtime): with the tokenizer's eos. Before the end no stop id is allowed.
            gc.stop_token_ids = {eos_id}
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


#: JSON Schema bounds XGrammar (OpenVINO GenAI 2026.4.1) does not enforce, measured on the tiny
#: Phi-3: numbers out of a ``number``'s minimum/maximum (even non-JSON text such as "025") or
#: exclusive bounds, integers that are not a ``multipleOf``. Integer bounds are enforced.
_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
#: keywords whose value maps names to subschemas
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def unenforced(schema: Any) -> str | None:
    """What in a JSON schema XGrammar would not enforce (so the output could break the schema),
    or None."""
    if isinstance(schema, list):
        return next((why for why in map(unenforced, schema) if why), None)
    if not isinstance(schema, dict):
        return None
    if "multipleOf" in schema:
        return "multipleOf"
    types = schema.get("type")
    types = set(types) if isinstance(types, list) else {types}
    bounds = [k for k in _NUMBER_BOUNDS if k in schema]
    if bounds and types != {"integer"}:
        return f"{bounds[0]} on a non-integer number (give the field \"type\": \"integer\")"
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            why = unenforced(list(value.values()))
        elif key in ("const", "enum", "default", "examples"):
            continue
        else:
            why = unenforced(value)
        if why:
            return why
    return None


def structured_output(constraint):
    """OpenVINO GenAI's ``StructuredOutputConfig`` for an aipc constraint. XGrammar takes each
    kind as aipc has it: the JSON schema text, the regex (matched whole), and the GBNF grammar
    (XGrammar's EBNF is GBNF, start rule ``root``). A schema with a bound XGrammar does not
    enforce is refused (InvalidConfigError), never run with the bound dropped."""
    import openvino_genai

    if constraint.kind == "json_schema":
        why = unenforced(constraint.schema)
        if why:
            raise InvalidConfigError(f"OpenVINO GenAI (XGrammar) does not enforce {why} in a JSON schema")
    field = {"json_schema": "json_schema", "regex": "regex", "grammar": "grammar"}[constraint.kind]
    return openvino_genai.StructuredOutputConfig(**{field: constraint.value})


#: XGrammar's messages start "[hh:mm:ss] /path/to/xgrammar-src/cpp/file.cc:NN: "
_XGRAMMAR_PREFIX = re.compile(r"^(\[[0-9:]+\]\s*)?\S*xgrammar\S*:\d+:\s*")


def constraint_error(error: BaseException, constraint) -> InvalidConfigError | None:
    """The one-line InvalidConfigError for a constraint XGrammar refused when ``generate``
    compiled it (a regex with look-ahead, a GBNF rule not defined, a schema it cannot convert),
    or None when ``error`` is not that."""
    if constraint is None or not isinstance(error, RuntimeError):
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    said = next((line for line in lines if "xgrammar" in line.lower()), None)
    if said is None:
        return None
    reason = _XGRAMMAR_PREFIX.sub("", said)[:240]
    return InvalidConfigError(f"OpenVINO GenAI (XGrammar) cannot use the {constraint.kind} constraint: {reason}")


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
           on_end: Callable[[Any, bool], None] | None = None,
           last: Callable[[int, int], bool] | None = None, constraint=None) -> Iterator[Chunk]:
    """Call ``run(streamer)`` (a ``pipe.generate(inputs, config, streamer)``, or two: see
    :func:`crossing_runs`) in the core's threaded_stream; the streamer returns CANCEL (and its
    ``cancelled`` is True) once the consumer has closed the stream. ``on_done(result)`` gets the
    (last) result (perf metrics); ``map_error`` turns the runtime's errors
    into aipc errors. ``on_end(result, cancelled)`` runs still holding ``lock`` however ``run``
    ended (``result`` None when it raised; ``cancelled`` True once the streamer said CANCEL): where
    a backend records what state the pipeline kept. ``last(token, count)`` True: that token is the
    run's final one, and the streamer answers it with CANCEL too (see :class:`ChatReuse`).
    ``constraint``: the request's, if any: XGrammar's refusal of it becomes an InvalidConfigError
    (before ``map_error``)."""
    import openvino_genai

    def work(emit) -> None:
        count = [0]

        class Streamer(openvino_genai.StreamerBase):
            cancelled = False  # the streamer said CANCEL (the consumer has gone, or ``last``)

            def write(self, token):
                tokens = [token] if isinstance(token, int) else list(token)
                going = emit(tokens)
                count[0] += len(tokens)
                if going and last is not None and tokens and last(int(tokens[-1]), count[0]):
                    going = False
                self.cancelled = self.cancelled or not going
                return openvino_genai.StreamingStatus.RUNNING if going else openvino_genai.StreamingStatus.CANCEL

            def end(self):
                pass

        with lock if lock is not None else contextlib.nullcontext():
            result, streamer = None, Streamer()
            try:
                result = run(streamer)
            finally:
                if on_end is not None:
                    on_end(result, streamer.cancelled)
        if on_done is not None:
            on_done(result)

    def translate(error: BaseException) -> BaseException:
        refused = constraint_error(error, constraint)
        if refused is not None:
            return refused
        if map_error is not None:
            return map_error(error)
        if isinstance(error, RuntimeError):
            return BackendError(f"OpenVINO GenAI generation failed: {first_line(error)}")
        return error

    return threaded_stream(work, decode, translate)


def crossing_runs(generate: Callable[[list[int], int], Any], ids: list[int], max_new: int, original: int | None,
                  streamer, stops: set[int]):
    """``generate(prompt_ids, max_new_tokens)``: one LLMPipeline run with ``streamer``, its result
    returned. A LongRoPE model (``original``: its original context, :func:`aipc.artifacts.longrope_original`)
    whose generation crosses that context runs up to the crossing, then again from the whole sequence
    as a new prompt with a new KV state, so that every position is rotated with the long factors, as
    the model intends and the reference backend does (the pipeline alone would keep the short-factor
    KV entries and rotate only the new tokens with the long ones). The streamer sees one answer.
    ``stops``: the ids that end the answer. Returns the last run's result."""
    first = original + 1 - len(ids) if original else 0  # tokens up to the crossing
    if not 0 < first < max_new:
        return generate(ids, max_new)
    result = generate(ids, first)
    tokens = [int(t) for t in result.tokens[0]]
    if streamer.cancelled or len(tokens) < first or tokens[-1] in stops:
        return result  # the answer ended before the crossing
    return generate(ids + tokens, max_new - first)


class ChatReuse:
    """Prefix reuse through ``LLMPipeline``'s own chat mode fed token ids (one KV cache per
    pipeline: the stateful pipeline has one).

    In chat mode the pipeline keeps its KV cache between ``generate`` calls; before prefilling it
    cuts the cache back to the first token where its tokenized chat history and the cache differ
    (OpenVINO GenAI's ``align_cache_and_history`` / ``trim_kv_cache``, as for ``ChatHistory``)
    and prefills only the rest. Its history grows by every input and answer, except that a run
    its streamer cancels is rolled back out of it while the KV cache keeps what was computed. So
    the streamer answers the run's final token with CANCEL (``stream(last=...)``): the history
    stays empty, every prompt is sent whole, and the pipeline itself keeps exactly the common
    prefix of the prompt and its cache, whatever the prompt (a next turn, an edit, a regenerated
    answer, another conversation). When the cache already holds the whole prompt (a regenerated
    answer), a one-token cancelled run first cuts it to all but the prompt's last token, which
    must be fed again for its logits. A run whose end the streamer did not see (native stop
    strings) leaves the history holding the prompt and answer: a prompt that continues it is
    sent as its new tokens, any other one restarts the chat. A failed run restarts it.
    Call :meth:`inputs` and :meth:`end` under the pipeline's lock.
    """

    def __init__(self, pipe, enabled: bool, boundary: int | None = None) -> None:
        self.pipe, self.enabled, self.boundary = pipe, enabled, boundary
        self.history: list[int] | None = None  # the pipeline's tokenized chat history; None: restart
        self.kv: list[int] = []  # what the KV cache holds, at most (the last answer token may be unfed)
        self.prompt_tokens = 0  # of the run that filled it (a LongRoPE state's side: see aipc.prefix)
        self.sent: tuple[list[int], list[int]] = ([], [])
        # 2026.4 marks start_chat/finish_chat deprecated in favour of ChatHistory, which takes
        # messages (templated by the pipeline), not the core's templated token ids
        warnings.filterwarnings("ignore", r"start_chat\(\) / finish_chat\(\) API is deprecated", DeprecationWarning)

    def _restart(self) -> list[int]:
        self.pipe.finish_chat()  # drops the KV cache and the tokenized history
        self.pipe.start_chat()
        self.kv = []
        return []

    def inputs(self, ids: list[int]):
        """What to hand ``generate`` for the full prompt ``ids``, and how many of them the KV
        cache holds already (an estimate; :meth:`end` gives the pipeline's own count)."""
        if not self.enabled:
            return ids_tensor(ids), 0  # never in chat mode: the pipeline resets its state every call
        history, self.history = self.history, None  # unknown until end() has seen the run finish
        if history is None or (self.boundary and self.kv and
                               not same_side(self.boundary, len(ids), self.prompt_tokens, len(self.kv))):
            history = self._restart()  # a LongRoPE state is not reused across the original context
        if history and len(ids) > len(history) and ids[:len(history)] == history:
            new = ids[len(history):]
        else:
            shared = common_prefix(self.kv, ids)
            if history or (self.kv and not shared):
                # measured: the pipeline crashes (SIGSEGV) when asked to trim its whole KV cache
                history = self._restart()
            elif self.kv and shared >= len(ids) - 1 and (len(ids) < 2 or not self._crop(ids)):
                history = self._restart()
            new = ids
        self.sent = (history, new)
        return ids_tensor(new), min(common_prefix(self.kv, ids), len(ids) - 1)

    def _crop(self, ids: list[int]) -> bool:
        """Make the KV cache hold ``ids[:-1]`` and no more: run ``ids[:-1]`` plus a token the cache
        does not hold there for one token, cancelled (so the history stays empty)."""
        import openvino_genai

        taken = {ids[-1], self.kv[len(ids) - 1] if len(self.kv) >= len(ids) else -1}
        other = next(t for t in (0, 1, 2, 3) if t not in taken)
        seen: list[bool] = []

        class Cancel(openvino_genai.StreamerBase):
            def write(self, token):
                seen.append(True)
                return openvino_genai.StreamingStatus.CANCEL

            def end(self):
                pass

        config = openvino_genai.GenerationConfig(max_new_tokens=1, do_sample=False, apply_chat_template=False)
        self.pipe.generate(ids_tensor(ids[:-1] + [other]), config, Cancel())
        self.kv = ids[:-1] + [other]
        return bool(seen)

    def end(self, ids: list[int], result, cancelled: bool, prompt_tokens: int | None = None) -> int | None:
        """Record what the pipeline holds after a run for ``ids``; returns the prompt tokens it
        reused, from its own count of tokens prefilled (None if unknown). ``prompt_tokens``: the
        user's prompt when ``ids`` re-encoded a crossing (:func:`crossing_runs`), so the state counts
        as one whose generation crossed the original context, never reused (see aipc.prefix)."""
        if not self.enabled or result is None:
            return None
        history, new = self.sent
        tokens = [int(t) for t in result.tokens[0]]
        self.history = history if cancelled else history + new + tokens
        self.kv, self.prompt_tokens = list(ids) + tokens, prompt_tokens or len(ids)
        return len(ids) - int(result.perf_metrics.get_num_input_tokens())


def ids_tensor(ids: list[int]):
    import numpy
    import openvino

    return openvino.Tensor(numpy.array([ids], dtype=numpy.int64))
