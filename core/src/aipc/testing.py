"""Test models made on the spot: a tiny randomly initialised Phi-3 with an offline tokenizer.

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


def tiny_phi3_tokenizer():
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
        chat_template=PHI3_TEMPLATE, model_max_length=4096,
    )


def make_tiny_phi3(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random ``Phi3ForCausalLM`` (hidden 128, MLP 384, 2 layers) with its tokenizer to
    ``folder`` and return it. The same seed gives the same weights."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_phi3_tokenizer()
    end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")]
    config = Phi3Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
        original_max_position_embeddings=4096, initializer_range=0.2, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_ids[0], pad_token_id=tokenizer.pad_token_id,
    )
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
    config.setdefault("rope_theta", config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    path.write_text(json.dumps(config, indent=2))


def tiny_phi3_cached(seed: int = 0) -> Path:
    """The tiny Phi-3 in aipc's cache (built once, atomically), shared by test runs and tox envs."""
    from . import cache
    from .sources import is_hf_folder

    folder = cache.area("sources") / f"tiny-phi3-v3-seed{seed}"
    if not is_hf_folder(folder):
        with cache.atomic_dir(folder) as tmp:
            make_tiny_phi3(tmp, seed)
    return folder
