"""An example aipc backend, complete and small: PyTorch on the CPU with dynamic int8
quantization of every Linear layer, and its own token-by-token decode loop.

Copy this package to start a backend for your accelerator: keep the hook names, change what
they do. Walkthrough: docs/writing-a-backend.md in the aipc repository.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Iterator

from aipc import artifacts, guidance, hookimpl
from aipc.errors import InvalidConfigError, PromptTooLongError, UnsupportedPrecisionError
from aipc.options import thread_count
from aipc.prefix import PrefixCache
from aipc.streaming import IncrementalDecoder
from aipc.types import BackendInfo, Capabilities, Chunk, Device, GenerationConfig, LoadedModel

NAME = "example"  # must equal the entry-point name in pyproject.toml
PRECISIONS = ("fp32", "int8")
WEIGHTS = {"fp32": "model_fp32.pt", "int8": "model_int8.pt"}


@hookimpl
def aipc_backend_info() -> BackendInfo:
    # Called on every `aipc` start: describe, don't import torch here.
    return BackendInfo(
        name=NAME,
        version=version("aipc-example-backend"),
        description="Example: PyTorch CPU with dynamic int8 Linear layers and a plain decode loop",
        devices=(Device("CPU", PRECISIONS),),
        default_precision="int8",
        capabilities=Capabilities(validates_inputs=True, native_stop_strings=False, repetition_penalty=False, exact_precisions=("fp32",),
                                  prefix_cache=True, constraints=guidance.KINDS),
        priority=-10,  # never chosen over a real accelerator unless asked for
        runtime_versions={"torch": version("torch")},
        # the -o names accepted; the core refuses any other before a hook is called
        options={"threads": "PyTorch threads (env AIPC_NUM_THREADS)"},
    )


def _quantized(model, precision: str):
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if precision == "int8":  # per output channel: per-tensor scales lose SmolLM2's answer
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return model


@hookimpl
def aipc_quantize(request):
    if request.precision not in PRECISIONS:
        raise UnsupportedPrecisionError(f"{NAME} offers {', '.join(PRECISIONS)}, not {request.precision}")
    import torch
    from transformers import AutoModelForCausalLM

    request.progress(f"Quantizing Linear layers to {request.precision}")
    model = AutoModelForCausalLM.from_pretrained(request.source_dir, dtype=torch.float32).eval()
    torch.save(_quantized(model, request.precision).state_dict(), Path(request.output_dir) / WEIGHTS[request.precision])
    # config, tokenizer and chat template: what aipc_load and the core read (the core would copy
    # them after this hook too; doing it here keeps the folder complete for our own load)
    artifacts.copy_side_files(request.source_dir, request.output_dir)
    return request.manifest(versions={"torch": torch.__version__})


@hookimpl
def aipc_load(request):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if threads := thread_count(request.options):
        torch.set_num_threads(threads)
    folder = Path(request.artifact_dir)
    try:
        config = AutoConfig.from_pretrained(folder)
        model = _quantized(AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), request.manifest.precision)
        model.load_state_dict(torch.load(folder / WEIGHTS[request.manifest.precision], weights_only=True), strict=False)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # missing or truncated files: say so in one line
        raise artifacts.load_error(folder, error) from None
    return LoadedModel(runtime=(model, tokenizer), context_length=artifacts.context_length(folder),
                       extra={"eos": artifacts.eos_token_ids(folder),  # config.json + generation_config.json
                              # prefix reuse: the KV caches of the last conversations (see aipc_generate)
                              # (a LongRoPE model's states are never reused across its original context)
                              "prefix": PrefixCache(request.cache_slots, artifacts.longrope_original(folder)),
                              # constrained output: llguidance masks each step's logits
                              "guide": guidance.Guide(tokenizer)})


@hookimpl
def aipc_tokenize(model, text: str) -> list[int]:
    return model.runtime[1](text, add_special_tokens=False)["input_ids"]


def _next_token(logits, config: GenerationConfig, generator) -> int:
    """Greedy, or temperature / top-k / top-p sampling, over one row of logits."""
    import torch

    if not config.sampling:
        return int(logits.argmax())
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if config.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        outside = ordered.cumsum(0) - ordered > config.top_p
        probs = probs.scatter(0, order, ordered.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


@hookimpl
def aipc_generate(model, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    import torch
    from transformers import DynamicCache

    hf_model, tokenizer = model.runtime
    # Refuse what this loop cannot do (the capabilities say so too; the core checks them first,
    # but a backend must not silently ignore a setting that reaches it).
    if config.repetition_penalty != 1.0:
        raise InvalidConfigError(f"backend {NAME!r} has no repetition penalty")
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    if model.context_length and len(prompt_ids) >= model.context_length:
        raise PromptTooLongError(f"the prompt has {len(prompt_ids)} tokens; the model's context is {model.context_length}")
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    decoder = IncrementalDecoder(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    matcher = model.extra["guide"].matcher(config.constraint) if config.constraint else None
    # Prefix reuse: continue the KV cache of the conversation this prompt extends, cut back to
    # the tokens both share, and feed only the rest. `seen` is what the cache holds, always.
    slot, reuse = model.extra["prefix"].take(prompt_ids)
    past = slot.state if reuse else DynamicCache()
    past.crop(reuse)
    model.cached_tokens = reuse
    seen = list(prompt_ids[:reuse])
    input_ids = prompt_ids[reuse:]
    # ignore_eos: EOS cannot be chosen (its logits are masked), so exactly max_new_tokens come out,
    # as the reference does; not under a constraint, which ends where its grammar does.
    eos = sorted(model.extra["eos"])
    suppress_eos = config.ignore_eos and matcher is None
    # A plain generator: when the core closes it early (stop string, Ctrl-C, the last token
    # counted) the loop just ends, and `finally` records what the cache holds for the next prompt.
    try:
        with torch.inference_mode():
            for step in range(config.max_new_tokens):
                out = hf_model(input_ids=torch.tensor([input_ids]), past_key_values=past, use_cache=True)
                past, seen = out.past_key_values, seen + input_ids
                logits = out.logits[0, -1].float()
                if matcher is not None:
                    model.extra["guide"].mask_(matcher, logits)
                if suppress_eos:
                    logits[[i for i in eos if i < logits.numel()]] = float("-inf")
                token = _next_token(logits, config, generator)
                if token in model.extra["eos"]:
                    break
                if matcher is not None:
                    matcher.consume_token(token)
                text = decoder.add([token])
                if step == config.max_new_tokens - 1:  # the core closes the stream after this token:
                    text += decoder.flush()  # release the text held back for an incomplete character now
                yield Chunk(text, tokens=1, ids=(token,))
                input_ids = [token]
        rest = decoder.flush()  # ended at EOS: the held-back tail
        if rest:
            yield Chunk(rest, tokens=0)
    finally:
        slot.hold(past, seen)
