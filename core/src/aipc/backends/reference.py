"""The reference backend ``transformers``: plain transformers on PyTorch, CPU.

It is what the conformance suite compares every other backend against, so it stays simple:
the artifact is the Hugging Face folder itself (hard links, or copies across file systems),
and the precision is applied when loading.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

from aipc import __version__, artifacts, guidance, hookimpl
from aipc.errors import PromptTooLongError, UnsupportedPrecisionError
from aipc.options import thread_count
from aipc.plugins import package_versions
from aipc.prefix import PrefixCache
from aipc.streaming import threaded_stream
from aipc.types import BackendInfo, Capabilities, Chunk, Device, GenerationConfig, LoadedModel

NAME = "transformers"
PRECISIONS = ("fp32", "fp16")
MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken")


def _version(package: str) -> str:
    return package_versions(package)[package]


@hookimpl
def aipc_backend_info() -> BackendInfo:
    return BackendInfo(
        name=NAME,
        version=__version__,
        description="Reference: plain transformers on PyTorch (CPU). Slow, exact; what others are compared with.",
        devices=(Device("CPU", PRECISIONS),),
        default_precision="fp32",
        capabilities=Capabilities(validates_inputs=True, native_stop_strings=True, repetition_penalty=True, prefix_cache=True,
                                  longrope_reencode=True, constraints=guidance.KINDS),
        priority=0,
        runtime_versions={"torch": _version("torch"), "transformers": _version("transformers")},
        options=dict(OPTIONS),
    )


OPTIONS = {"threads": "PyTorch intra-op threads (default: PyTorch's; env AIPC_NUM_THREADS)"}


def _check_options(options: dict[str, str]) -> None:
    """The core checks option names before a hook is reached; this covers direct hook calls."""
    aipc_backend_info().check_options(options)


@hookimpl
def aipc_quantize(request) -> object:
    _check_options(request.options)
    if request.precision not in PRECISIONS:
        raise UnsupportedPrecisionError(f"the reference backend runs {', '.join(PRECISIONS)}, not {request.precision}")
    out = Path(request.output_dir)
    for pattern in MODEL_FILES:
        for file in Path(request.source_dir).glob(pattern):
            try:
                os.link(file, out / file.name)
            except OSError:
                shutil.copy2(file, out / file.name)
    request.progress("Linked the Hugging Face folder; the precision is applied at load")
    return request.manifest(options={"dtype": request.precision}, versions=aipc_backend_info().runtime_versions)


@hookimpl
def aipc_load(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _check_options(request.options)
    threads = thread_count(request.options)
    if threads:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[request.manifest.precision]
    folder = str(request.artifact_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=request.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=request.trust_remote_code,
                                                     **{dtype_argument(): dtype})
    except Exception as error:  # transformers raises OSError, ValueError, safetensors errors...
        raise artifacts.load_error(folder, error) from None
    model.eval()
    original = artifacts.longrope_original(request.artifact_dir)
    if original:
        _reencode_at_the_crossing(model, original)
    return LoadedModel(runtime=(model, tokenizer), context_length=artifacts.context_length(request.artifact_dir),
                       extra={"prefix": PrefixCache(request.cache_slots, original), "guide": guidance.Guide(tokenizer)})


def dtype_argument() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; older ones (the NPU library's
    4.47) reject ``dtype``."""
    major, minor = (int(part) for part in _version("transformers").split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


@hookimpl
def aipc_tokenize(model, text: str) -> list[int]:
    return model.runtime[1](text, add_special_tokens=False)["input_ids"]


class _Streamer:
    """A transformers streamer that hands generated token ids to ``emit``."""

    def __init__(self, emit) -> None:
        self.emit = emit
        self.prompt_seen = False
        self.going = True
        self.ids: list[int] = []  # generated so far

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        self.ids.extend(ids)
        self.going = self.emit(ids)

    def end(self) -> None:
        pass


def generation_kwargs(config: GenerationConfig, tokenizer) -> dict:
    """transformers ``generate`` arguments for an aipc config (every field set explicitly, so a
    model's own generation_config.json cannot change what the user asked for)."""
    kwargs = dict(max_new_tokens=config.max_new_tokens, do_sample=config.sampling,
                  repetition_penalty=config.repetition_penalty, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if config.sampling:
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if config.stop:
        kwargs.update(stop_strings=list(config.stop), tokenizer=tokenizer)
    if config.ignore_eos and config.constraint is None:  # a constraint ends where its grammar does
        kwargs.update(min_new_tokens=config.max_new_tokens)
    return kwargs


def _cropped(cache, length: int):
    """``cache`` (a transformers DynamicCache) cut back to its first ``length`` tokens, or None
    where it cannot be (a sliding-window layer past its window, a recurrent layer: their state
    is not a list of per-token entries)."""
    if cache is None or length <= 0:
        return None
    layers = getattr(cache, "layers", None)  # transformers >= 4.56; older caches are plain lists
    if layers is not None:
        from transformers.cache_utils import DynamicLayer

        if not all(isinstance(layer, DynamicLayer) for layer in layers):
            return None
    try:
        cache.crop(length)
    except (ValueError, AttributeError, NotImplementedError):
        return None
    return cache if cache.get_seq_length() == length else None


def _reencode_at_the_crossing(hf_model, original: int) -> None:
    """A LongRoPE model (:func:`aipc.artifacts.longrope_original`): make ``generate`` re-encode the
    whole sequence with the long factors when a generation
    crosses the original context, into the same cache object.

    transformers' Phi-3 drops the cache there, as the model intends, but its generation loop then
    feeds the model only the last token, so every later token came from one token of context
    (measured on a tiny LongRoPE model: 6 of 16 greedy tokens right). Here the cache is emptied in
    place and the whole sequence fed, so the cache aipc keeps afterwards holds the long-factor state."""
    import types

    from transformers.generation.utils import GenerationMixin

    def prepare(self, input_ids, past_key_values=None, next_sequence_length=None, **kwargs):
        if past_key_values is not None and input_ids.shape[1] > original >= past_key_values.get_seq_length() > 0:
            past_key_values.crop(0)
            next_sequence_length = None
            kwargs.pop("position_ids", None)
        return GenerationMixin.prepare_inputs_for_generation(
            self, input_ids, next_sequence_length=next_sequence_length, past_key_values=past_key_values, **kwargs)

    hf_model.prepare_inputs_for_generation = types.MethodType(prepare, hf_model)


@hookimpl
def aipc_generate(model, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    import torch
    from transformers import DynamicCache, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    hf_model, tokenizer = model.runtime
    processors = LogitsProcessorList()
    if config.constraint is not None:  # llguidance masks each step's logits (compiled before any work)
        processors.append(model.extra["guide"].logits_processor(config.constraint))
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    prompt_ids = inputs["input_ids"][0].tolist()
    if model.context_length and len(prompt_ids) >= model.context_length:  # the core checks first; direct calls too
        raise PromptTooLongError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {model.context_length}")
    # Prefix reuse: continue the kept state of the conversation this prompt extends, cut back
    # to the tokens it shares with the prompt; generate() then prefills only the rest.
    slot, reuse = model.extra["prefix"].take(prompt_ids)
    cache = _cropped(slot.state, reuse)
    if cache is None:
        reuse, cache = 0, DynamicCache()
    model.cached_tokens = reuse
    slot.clear()  # until this generation has finished and says what the cache holds

    def run(emit) -> None:
        streamer = _Streamer(emit)

        class Cancelled(StoppingCriteria):  # stops generate() once the consumer has gone
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), not streamer.going, dtype=torch.bool)

        if config.seed is not None:
            torch.manual_seed(config.seed)
        with torch.inference_mode():
            hf_model.generate(**inputs, past_key_values=cache, streamer=streamer, logits_processor=processors,
                              stopping_criteria=StoppingCriteriaList([Cancelled()]),
                              **generation_kwargs(config, tokenizer))
        # the cache now holds the prompt and every generated token but the last (never fed back)
        slot.hold(cache, (prompt_ids + streamer.ids)[: cache.get_seq_length()])

    return threaded_stream(run, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
