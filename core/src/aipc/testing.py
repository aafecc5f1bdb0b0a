"""Test models made on the spot: tiny randomly initialised Phi-3s with an offline tokenizer.

Used by the conformance suite and by backend authors' own tests. It has Phi-3's architecture
(``Phi3ForCausalLM``), special tokens and chat template, so every backend exercises the same
code path that real Phi-3-mini takes, in seconds.
"""

from __future__ import annotations

from pathlib import Path

from .chat import PHI3_TEMPLATE

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

_CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.
Can you introduce yourself? I am a helpful AI assistant running locally on this computer.
Once upon a time, a small robot lived in a quiet village near the sea. Every morning it
counted the boats: one, two, three, four, five, six, seven, eight, nine, ten. The numbers
0 1 2 3 4 5 6 7 8 9 and 2024, 3.14, 42! Hello world. What is the weather like today?
Neural networks run on CPUs, GPUs and NPUs. Quantization stores weights in int4, int8 or fp16.
"""


def tiny_phi3_tokenizer(max_length: int = 4096):
    """A byte-level BPE tokenizer (GPT-2 style) trained on a fixed text, with Phi-3's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="<|end|>", unk_token="<unk>", pad_token="<|endoftext|>",
        chat_template=PHI3_TEMPLATE, model_max_length=max_length,
    )


VARIANTS = ("phi3", "phi3-128k", "phi4-mini")
"""The tiny models: ``phi3`` (Phi-3-mini-4k's features), ``phi3-128k`` (Phi-3-mini-128k and
Phi-3.5-mini: LongRoPE with short and long factors, original context 64, max 1024) and
``phi4-mini`` (LongRoPE as well, ``partial_rotary_factor`` 0.75, tied embeddings, grouped KV heads,
a vocabulary padded past the tokenizer's)."""
LONGROPE_ORIGINAL = 64  # the tiny LongRoPE models' original_max_position_embeddings
LONGROPE_MAX = 1024


def make_tiny_phi3(folder: Path, seed: int = 0, variant: str = "phi3") -> Path:
    """Write a tiny random ``Phi3ForCausalLM`` (hidden 128, MLP 384, 2 layers) of one of
    :data:`VARIANTS` with its tokenizer to ``folder`` and return it. The same seed gives the same
    weights."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny model variant {variant!r} (known: {', '.join(VARIANTS)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    longrope = variant != "phi3"
    tokenizer = tiny_phi3_tokenizer(LONGROPE_MAX if longrope else 4096)
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")]
    shape = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=4096,
                 original_max_position_embeddings=4096, tie_word_embeddings=False)
    rope: dict | None = None  # Phi-3's default
    if longrope:
        # Phi-4-mini: head 64 of which 48 rotate (cos cache 24 wide: a multiple of 8, as onnxruntime-genai
        # needs, like the real model's 128 x 0.75), 1 KV head per 2 query heads, vocabulary padded to 64s
        phi4 = variant == "phi4-mini"
        rotary = 48 if phi4 else 32
        shape.update(max_position_embeddings=LONGROPE_MAX, original_max_position_embeddings=LONGROPE_ORIGINAL)
        if phi4:
            shape.update(num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         vocab_size=(len(tokenizer) + 63) // 64 * 64 + 64)
        half = rotary // 2
        rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75 if phi4 else 1.0,
                "short_factor": [round(1.0 + 0.5 * i / half, 4) for i in range(half)],
                "long_factor": [round(1.0 + 7.0 * i / half, 4) for i in range(half)]}
    config = Phi3Config(**shape, rope_parameters=rope, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=end_ids[0], pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_ids, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _readable_by_older_transformers(folder)
    return folder


def _readable_by_older_transformers(folder: Path) -> None:
    """transformers 5 writes a tokenizer class and rope keys that 4.4x (the NPU library's pin)
    cannot read; add the older spellings beside them."""
    import json

    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    if (folder / "chat_template.jinja").exists():  # transformers 5 stores it beside the config
        settings.setdefault("chat_template", (folder / "chat_template.jinja").read_text())
    path.write_text(json.dumps(settings, indent=2))
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters", {})
    config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    if rope.get("rope_type") == "longrope":  # as the hub's Phi-3-128k / Phi-4-mini configs spell it
        config.setdefault("rope_scaling", {"type": "longrope", "short_factor": rope["short_factor"],
                                           "long_factor": rope["long_factor"]})
        config.setdefault("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    path.write_text(json.dumps(config, indent=2))


def tiny_phi3_cached(seed: int = 0, variant: str = "phi3") -> Path:
    """A tiny model (:data:`VARIANTS`) in aipc's cache (built once, atomically), shared by test runs
    and tox envs."""
    from . import cache
    from .sources import is_hf_folder

    folder = cache.area("sources") / (f"tiny-phi3-v3-seed{seed}" if variant == "phi3" else f"tiny-{variant}-v1-seed{seed}")
    if not is_hf_folder(folder):
        with cache.atomic_dir(folder) as tmp:
            make_tiny_phi3(tmp, seed, variant)
    return folder


def prompt_of_length(model, tokens: int) -> str:
    """A user message whose chat-templated prompt (``model.format_prompt``) has ``tokens`` tokens
    or just under: short, long and context-crossing prompts for the LongRoPE checks."""
    words = ("The capital of France is Paris and the numbers are one two three four five six seven "
             "eight nine ten while robots count boats near the quiet sea every morning").split()
    text, i = "", 0
    while len(model.tokenize(model.format_prompt(f"{text} {words[i % len(words)]}".strip()))) <= tokens:
        text = f"{text} {words[i % len(words)]}".strip()
        i += 1
    return text


def recomputed_greedy(folder: Path, ids: list[int], new: int) -> list[int]:
    """The ``new`` greedy tokens after ``ids`` by transformers at fp32, recomputing the whole
    sequence at every step (no KV cache), the end tokens suppressed (as ``ignore_eos``). For a
    LongRoPE model this is what its implementation intends: every position uses the short factors
    while the sequence fits the original context, and all of them the long factors once it does not."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ends = model.generation_config.eos_token_id
    ends = [ends] if isinstance(ends, int) else list(ends or [])
    sequence = list(ids)
    with torch.no_grad():
        for _ in range(new):
            logits = model(torch.tensor([sequence]), use_cache=False).logits[0, -1]
            logits[ends] = -float("inf")
            sequence.append(int(logits.argmax()))
    return sequence[len(ids):]
