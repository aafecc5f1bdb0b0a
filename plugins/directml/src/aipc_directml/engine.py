"""Loading and running an onnxruntime-genai model: og.Config / og.Model / og.Tokenizer and the
og.Generator loop with a tokenizer stream.

Uses only the API that onnxruntime-genai 0.13 (the newest DirectML build on PyPI) shares with
0.18: Config (clear_providers, append_provider, overlay), Model, Tokenizer (encode, create_stream),
GeneratorParams (set_search_options, set_guidance), Generator (append_tokens, generate_next_token,
get_next_tokens, get_sequence, rewind_to, is_done) and is_dml_available.

Constrained output: ``GeneratorParams.set_guidance(type, data)``, onnxruntime-genai's own
llguidance, which masks the logits of every step inside ``generate_next_token`` (types
``json_schema``, ``regex``, ``lark_grammar``; aipc's GBNF grammars are converted to Lark by
llguidance's converter). The grammar is compiled when the ``og.Generator`` is made, so a bad
constraint fails before any token. A constrained request always gets a generator of its own:
guidance is fixed in a generator's params for its life, so a kept generator cannot serve it.

Prefix reuse: a generator is kept per slot (``aipc.prefix.PrefixCache``). A new prompt that
begins with ids a kept generator holds rewinds it to the common prefix (``rewind_to``) and
appends only the rest (``append_tokens``), the pattern of onnxruntime-genai's own model-chat.py.
onnxruntime-genai refuses that continuation when the KV cache lives on DirectML (it allows CPU,
CUDA, WebGPU, OpenVINO, TensorRT-RTX, RyzenAI), so on the ``dml`` provider every prompt gets a
new generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from aipc.artifacts import first_line, longrope_original, read_config
from aipc.errors import BackendUnavailableError, InvalidConfigError, InvalidModelError, PromptTooLongError
from aipc.options import thread_count
from aipc.prefix import PrefixCache, Slot
from aipc.types import Chunk, GenerationConfig, LoadedModel

from . import artifact
from .devices import describe_devices


@dataclass
class Runtime:
    """What ``LoadedModel.runtime`` holds for this backend."""

    model: Any
    tokenizer: Any
    provider: str  # "dml" or "cpu": the execution provider actually used
    built_for: str  # the builder's target recorded in genai_config.json
    context_length: int | None
    added: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))  # ids encode() adds around text
    # ids -> text as the Hugging Face tokenizer gives it, when tokenizer.json is there: the reference
    # backend's text for the same tokens, invalid UTF-8 included (onnxruntime-genai's own stream
    # drops incomplete byte sequences, transformers shows U+FFFD); else onnxruntime-genai's stream
    decode: Any = None
    slots: PrefixCache = field(default_factory=lambda: PrefixCache(0))  # kept generators (_Kept)
    # whether this onnxruntime-genai was built with guidance (llguidance): checked at the first
    # constrained request, "" when it was, else why not
    guidance_absent: str | None = None
    original: int | None = None  # a LongRoPE model's original context: re-encoded at the crossing


#: a kept generator's max_length: twice what its first prompt needs, at least this, at most the
#: context. The KV buffer is allocated at max_length (past_present_share_buffer), so this is the
#: memory a slot holds; a conversation that outgrows it gets a new generator, twice as long.
KEEP_MIN_LENGTH = 1024


@dataclass
class _Kept:
    """A generator kept in a slot: the search options it was made with (fixed for its life; the
    ``key`` a request must match) and whether a stream is running on it."""

    generator: Any
    key: tuple
    options: dict[str, Any]
    busy: bool = False


def _og():
    try:
        import onnxruntime_genai as og
    except ImportError as error:  # a broken or missing wheel: the backend cannot run here
        raise BackendUnavailableError(f"onnxruntime-genai cannot be imported: {error}") from None
    return og


def dml_available(og) -> bool:
    check = getattr(og, "is_dml_available", None)
    try:
        return bool(check()) if check else False
    except Exception:  # an old or odd build: treat as absent
        return False


def _dml_absent_reason() -> str:
    dml = next(d for d in describe_devices() if d.name == "DML")
    return dml.reason or "the installed onnxruntime-genai was not built with DirectML"


def load(request, device: str):
    from aipc.streaming import hf_decoder

    folder = Path(request.artifact_dir)
    config = artifact.read_config(folder)
    artifact.check_files(folder, config)
    artifact.check_rotary(read_config(folder))
    threads = thread_count(request.options)
    target = artifact.built_for(config)
    og = _og()
    has_dml = dml_available(og)
    if device == "DML" and not has_dml:
        raise BackendUnavailableError(
            f"DirectML was asked for but is not available: {_dml_absent_reason()}. "
            "Use --device CPU, or --device AUTO to fall back to the CPU when DirectML is absent"
        )
    provider = "dml" if device == "DML" or (device == "AUTO" and has_dml) else "cpu"
    if target not in ("cpu", "dml"):
        request.progress(f"This model was built for {target}; running it on the {provider} provider")
    try:
        og_config = og.Config(str(folder))
        og_config.clear_providers()
        if provider == "dml":
            og_config.append_provider("dml")
        if threads:
            if not hasattr(og_config, "overlay"):
                raise InvalidConfigError("this onnxruntime-genai has no Config.overlay: the thread count cannot be set")
            overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
            og_config.overlay(json.dumps(overlay))
        model = og.Model(og_config)
        tokenizer = og.Tokenizer(model)
    except InvalidConfigError:
        raise
    except Exception as error:  # onnxruntime-genai raises RuntimeError for everything
        message = first_line(error, 300)
        if "DML" in message or "DirectML" in message:
            raise BackendUnavailableError(f"DirectML cannot run this model here: {message}") from None
        raise InvalidModelError(f"cannot load {folder}: {message}") from None
    runtime = Runtime(model, tokenizer, provider, target, artifact.context_length(config))
    runtime.original = longrope_original(folder)
    # continuing a generator: CPU provider only (onnxruntime-genai refuses it on DirectML), and a
    # context length to size the kept generators' max_length
    if provider == "cpu" and runtime.context_length and hasattr(og.Generator, "rewind_to"):
        runtime.slots = PrefixCache(request.cache_slots, runtime.original)
    runtime.added = _added_tokens(tokenizer)
    runtime.decode = hf_decoder(folder)  # the reference's text for the same ids (see aipc.streaming)
    request.progress(f"Loaded on the {provider.upper()} execution provider (model built for {target})")
    return LoadedModel(runtime=runtime, context_length=runtime.context_length,
                       extra={"provider": provider, "built_for": target, "threads": threads})


def _added_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer adds around any text (e.g. a BOS from ``add_bos_token``)."""
    empty = [int(i) for i in tokenizer.encode("")]
    probe = [int(i) for i in tokenizer.encode("a")]
    if not empty:
        return [], []
    # Split the additions into what comes before and after the text by where "a" lands.
    for cut in range(len(empty) + 1):
        if probe[:cut] == empty[:cut] and probe[len(probe) - (len(empty) - cut):] == empty[cut:]:
            return empty[:cut], empty[cut:]
    return [], []


def encode(model, text: str) -> list[int]:
    """Token ids of ``text`` without added special tokens (as HF's add_special_tokens=False)."""
    runtime: Runtime = model.runtime
    if runtime is None:
        raise InvalidConfigError("the model was closed")
    ids = [int(i) for i in runtime.tokenizer.encode(text)]
    before, after = runtime.added
    if before and ids[: len(before)] == before:
        ids = ids[len(before):]
    if after and ids[len(ids) - len(after):] == after:
        ids = ids[: len(ids) - len(after)]
    return ids


def search_options(config: GenerationConfig, prompt_tokens: int, context: int | None) -> dict[str, Any]:
    """onnxruntime-genai search options for an aipc config. ``max_length`` counts the prompt, so
    it is prompt + max_new_tokens (capped at the context); every option is set explicitly so the
    folder's genai_config.json cannot change what the user asked for. Under a constraint
    ``ignore_eos`` does not apply: the output ends where the constraint is complete (guidance
    then allows only EOS, which a min_length would forbid, leaving no token at all)."""
    max_length = prompt_tokens + config.max_new_tokens
    if context:
        max_length = min(max_length, context)
    options: dict[str, Any] = {
        "max_length": max_length,
        "min_length": max_length if config.ignore_eos and config.constraint is None else 0,
        "do_sample": bool(config.sampling),
        "num_beams": 1,
        "repetition_penalty": float(config.repetition_penalty),
    }
    if config.sampling:
        options.update(temperature=float(config.temperature), top_p=float(config.top_p), top_k=int(config.top_k))
    if config.seed is not None:
        options["random_seed"] = int(config.seed)
    return options


def _reuse_key(options: dict[str, Any]) -> tuple | None:
    """What a kept generator must have been made with to serve a request with these search
    options (onnxruntime-genai fixes them when it makes a generator; max_length and min_length
    are the kept generator's own), or None when the request needs a generator of its own: a
    seeded sampling run must repeat, which a generator whose random state has moved on cannot."""
    if options["do_sample"] and "random_seed" in options:
        return None
    ignored = ("max_length", "min_length") if options["do_sample"] else ("max_length", "min_length", "random_seed")
    kept = tuple(sorted((k, v) for k, v in options.items() if k not in ignored))
    return kept + (("ignore_eos", options["min_length"] > 0),)


def generate(model, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    runtime: Runtime = model.runtime
    if runtime is None:
        raise InvalidConfigError("the model was closed")
    ids = encode(model, prompt)
    if not ids:
        raise InvalidConfigError("the prompt is empty: it has no tokens")
    context = runtime.context_length
    if context and len(ids) >= context:
        raise PromptTooLongError(f"the prompt has {len(ids)} tokens; the model's context is {context}")
    options = search_options(config, len(ids), context)
    model.cached_tokens = 0
    guide = guidance(runtime, config.constraint) if config.constraint is not None else None
    # a LongRoPE generation that crosses the original context is re-encoded there (see _tokens),
    # except under a constraint: a new generator would start the grammar again
    crossing = runtime.original + 1 - len(ids) if runtime.original and guide is None else 0
    # a constrained request: a generator of its own (guidance is fixed in a generator's params)
    key = _reuse_key(options) if runtime.slots.enabled and guide is None else None
    if key is None:  # a generator for this prompt alone, sized to it
        generator = _generator(runtime, options, guide)
        return _stream(runtime, generator, options, ids, config.max_new_tokens, crossing)
    return _stream_kept(model, runtime, options, key, ids, config.max_new_tokens, crossing)


#: aipc constraint kind -> onnxruntime-genai guidance type
GUIDANCE_TYPES = {"json_schema": "json_schema", "regex": "regex", "grammar": "lark_grammar"}


@dataclass(frozen=True)
class Guide:
    """What ``GeneratorParams.set_guidance`` gets for one aipc constraint."""

    kind: str  # the aipc constraint kind, for messages
    type: str  # the onnxruntime-genai guidance type
    data: str


def guidance(runtime: Runtime, constraint) -> Guide:
    """The guidance for ``constraint``: InvalidConfigError when this onnxruntime-genai cannot
    constrain output (no ``set_guidance``, or built without llguidance: such a build accepts
    ``set_guidance`` and then generates unconstrained text, so it is probed once per model) or
    a grammar does not convert to Lark."""
    if runtime.guidance_absent is None:
        runtime.guidance_absent = _guidance_absent(runtime)
    if runtime.guidance_absent:
        raise InvalidConfigError(f"this onnxruntime-genai cannot constrain output: {runtime.guidance_absent}")
    if constraint.kind == "grammar":
        return Guide("grammar", "lark_grammar", gbnf_to_lark(constraint.value))
    if constraint.kind == "json_schema":  # the reference's whitespace rule (llguidance too)
        from aipc.guidance import llguidance_schema

        return Guide("json_schema", "json_schema", llguidance_schema(constraint))
    return Guide(constraint.kind, GUIDANCE_TYPES[constraint.kind], constraint.value)


def _guidance_absent(runtime: Runtime) -> str:
    """"" when the runtime honours guidance, else why not. A build with llguidance refuses an
    unknown guidance type when the generator is made ("Unsupported guidance type"); a build
    without it logs a warning and makes an unguided generator."""
    og = _og()
    if not hasattr(og.GeneratorParams, "set_guidance"):
        return "it has no GeneratorParams.set_guidance"
    params = og.GeneratorParams(runtime.model)
    params.set_search_options(max_length=2)
    params.set_guidance("aipc_probe", "x")
    try:
        generator = og.Generator(runtime.model, params)
    except Exception as error:
        if "unsupported guidance type" in str(error).lower():
            return ""
        return f"its guidance check failed: {first_line(error, 300)}"
    del generator
    return "it was built without guidance (llguidance): set_guidance would be ignored"


@lru_cache(maxsize=32)
def gbnf_to_lark(grammar: str) -> str:
    """A GBNF grammar (aipc's grammar form) as the Lark grammar onnxruntime-genai takes,
    converted by llguidance's own converter."""
    try:
        from llguidance.gbnf_to_lark import any_to_lark
    except ImportError as error:
        raise InvalidConfigError(f"grammars need llguidance's GBNF converter: {error}") from None
    try:
        return any_to_lark(grammar)
    except Exception as error:  # GbnfToLarkError and parser errors
        raise InvalidConfigError(f"the grammar is not valid GBNF: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    """The runtime's (or llguidance's) message in one line: its first line, plus the line that
    says what is wrong when the message goes on (llguidance's regex errors put it below)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    first = lines[0].removeprefix("Error creating grammar: ")
    detail = next((line for line in lines[1:] if line.startswith("error:")), None)
    return (f"{first} {detail}" if detail else first)[:300]


def _generator(runtime: Runtime, options: dict[str, Any], guide: Guide | None = None):
    og = _og()
    try:
        params = og.GeneratorParams(runtime.model)
        params.set_search_options(**options)
    except Exception as error:
        raise InvalidConfigError(f"onnxruntime-genai refused the settings: {first_line(error, 300)}") from None
    if guide is None:
        try:
            return og.Generator(runtime.model, params)
        except Exception as error:
            raise InvalidConfigError(f"onnxruntime-genai refused the settings: {first_line(error, 300)}") from None
    try:  # the runtime compiles the grammar here, before any token
        params.set_guidance(guide.type, guide.data)
        return og.Generator(runtime.model, params)
    except Exception as error:
        message = f"onnxruntime-genai cannot use the {guide.kind} constraint: {_one_line(error)}"
        raise InvalidConfigError(message) from None


class _StreamDecoder:
    """onnxruntime-genai's own tokenizer stream, with the IncrementalDecoder's add / flush."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def add(self, ids) -> str:
        return self.stream.decode(ids[0])

    def flush(self) -> str:
        return ""


def _decoder(runtime: Runtime):
    if runtime.decode is not None:
        from aipc.streaming import IncrementalDecoder

        return IncrementalDecoder(runtime.decode)
    return _StreamDecoder(runtime.tokenizer.create_stream())


def _stream(runtime: Runtime, generator, options: dict[str, Any], ids: list[int], max_new_tokens: int,
            crossing: int) -> Iterator[Chunk]:
    """One Chunk per generated token from a generator made for this prompt. Work happens only
    while the consumer pulls, so closing the iterator early (stop string, Ctrl-C) stops the
    runtime at once."""
    try:
        generator.append_tokens(ids)  # the prompt: processed with the first token (prefill)
        yield from _tokens(generator, _decoder(runtime), max_new_tokens, crossing,
                           lambda old: _reencoded(runtime, old, options))
    finally:
        del generator


def _reencoded(runtime: Runtime, generator, options: dict[str, Any]):
    """A new generator (``options``) holding ``generator``'s whole sequence, prefilled afresh."""
    fresh = _generator(runtime, options)
    fresh.append_tokens(generator.get_sequence(0))
    return fresh


def _tokens(generator, decoder, max_new_tokens: int, crossing: int = 0, renew=None) -> Iterator[Chunk]:
    """``crossing``: the tokens a LongRoPE model generates before its sequence crosses the original
    context; there ``renew(generator)`` gives a generator holding the whole sequence in a new KV
    state, so every position is rotated with the long factors, as the model intends and the
    reference backend does (a generator left alone keeps the short-factor entries)."""
    produced = 0
    while produced < max_new_tokens and not generator.is_done():
        if produced and produced == crossing:
            generator = renew(generator)
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        produced += 1
        yield Chunk(decoder.add([token]), tokens=1, ids=(token,))
    rest = decoder.flush()  # text held back at an incomplete UTF-8 sequence: shown as the reference does
    if rest:
        yield Chunk(rest, tokens=0)


def _stream_kept(model, runtime: Runtime, options: dict[str, Any], key: tuple, ids: list[int],
                 max_new_tokens: int, crossing: int) -> Iterator[Chunk]:
    """As ``_stream``, on the generator of the slot sharing the longest prefix with ``ids``: it is
    rewound to the common prefix and only the rest is appended. A kept generator's max_length
    is generator-wide (``KEEP_MIN_LENGTH``); ``max_new_tokens`` is counted here, the context
    limit was checked on the whole prompt.
    Afterwards the slot records exactly the ids the generator's KV state holds: its sequence
    minus the last sampled token, which has not been fed to the model yet (after a re-encoded
    crossing the slot's prompt is on the other side of the boundary: it is not reused)."""
    slot, reuse = runtime.slots.take(ids)
    kept, needed = slot.state, options["max_length"]
    if kept is None or kept.busy or kept.key != key or needed > kept.options["max_length"]:
        # nothing shared, a stream still running on it, other settings, or outgrown: a new generator
        reuse = 0
        length = min(runtime.context_length, max(2 * needed, KEEP_MIN_LENGTH))
        sized = {**options, "max_length": length, "min_length": length if options["min_length"] else 0}
        kept = _Kept(_generator(runtime, sized), key, sized)
        if slot.state is None or not slot.state.busy:
            slot.hold(kept, [])
        else:  # the slot's generator is streaming elsewhere: leave it to that stream
            slot = Slot()
    model.cached_tokens = reuse
    kept.busy, produced, held = True, 0, None

    def renew(old):  # the re-encoded generator is the one kept
        kept.generator = _reencoded(runtime, old, kept.options)
        return kept.generator

    try:
        if reuse:
            kept.generator.rewind_to(reuse)
        kept.generator.append_tokens(ids[reuse:])
        for chunk in _tokens(kept.generator, _decoder(runtime), max_new_tokens, crossing, renew):
            produced += chunk.tokens
            yield chunk
        held = True
    except GeneratorExit:  # closed midway: the state is consistent at a yield
        held = True
        raise
    finally:
        kept.busy = False
        if slot.state is kept:
            if held:
                sequence = kept.generator.get_sequence(0)
                slot.hold(kept, sequence[: len(sequence) - (1 if produced else 0)])
            else:  # an error inside the runtime: what the state holds is unknown
                slot.clear()
