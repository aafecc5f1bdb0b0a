"""Convert a GGUF chat model (llama architecture, GPT-2 style BPE vocab) into a plain Hugging Face folder.

Everything is read with the `gguf` package and rebuilt by hand instead of going through
`from_pretrained(gguf_file=...)`: transformers picks the wrong tokenizer for llama + gpt2-vocab
files (SmolLM2), its GGUF model loader needs `accelerate`, and a GGUF-loaded model refuses to save.
Heavy imports stay inside the functions so `import aipc.gguf` is cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# llama.cpp `tokenizer.ggml.pre` values whose pre-tokenizer is "split digits one by one, then the GPT-2 regex".
_PRE_DIGITS = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
# ... and those that use only the GPT-2 regex.
_PRE_GPT2 = {"gpt-2", "gpt2", "mpt", "olmo", "jais"}
_CONTROL, _USER_DEFINED = 3, 4  # gguf TokenType values

# GGUF tensor name -> HF LlamaForCausalLM name ("{}" = layer index).
_LLAMA_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{}.attn_norm": "model.layers.{}.input_layernorm",
    "blk.{}.attn_q": "model.layers.{}.self_attn.q_proj",
    "blk.{}.attn_k": "model.layers.{}.self_attn.k_proj",
    "blk.{}.attn_v": "model.layers.{}.self_attn.v_proj",
    "blk.{}.attn_output": "model.layers.{}.self_attn.o_proj",
    "blk.{}.ffn_norm": "model.layers.{}.post_attention_layernorm",
    "blk.{}.ffn_gate": "model.layers.{}.mlp.gate_proj",
    "blk.{}.ffn_up": "model.layers.{}.mlp.up_proj",
    "blk.{}.ffn_down": "model.layers.{}.mlp.down_proj",
}


def _open(gguf_file: Path):
    """Open a GGUF file, turning every parse failure into a one-line ValueError (the caller adds the path)."""
    from gguf import GGUFReader

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise ValueError("no such file")
    with gguf_file.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic bytes)")
    try:
        return GGUFReader(gguf_file)
    except Exception as e:  # truncated header or tensor data, bad offsets, ...
        detail = " ".join(str(e).split())[:120] or type(e).__name__
        raise ValueError(f"truncated or corrupt GGUF file ({detail})") from None


def _meta(reader, key: str, default: Any = None) -> Any:
    """A metadata value as a Python scalar/str/list, or `default` (ReaderField.contents() needs gguf>=0.16)."""
    from gguf import GGUFValueType

    field = reader.fields.get(key)
    if field is None:
        return default
    is_str = field.types[-1] == GGUFValueType.STRING
    values = [bytes(field.parts[i]).decode("utf-8") if is_str else field.parts[i].tolist()[0] for i in field.data]
    return values if field.types[0] == GGUFValueType.ARRAY else values[0]


def _special_tokens(reader, tokens: list[str]) -> dict[str, str]:
    """bos/eos/pad/unk token strings named by the GGUF metadata."""
    out = {}
    for name, key in [("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")]:
        i = _meta(reader, f"tokenizer.ggml.{key}_token_id")
        if i is not None and 0 <= i < len(tokens):
            out[name] = tokens[i]
    if "pad" not in out and "eos" in out:
        out["pad"] = out["eos"]
    return out


def _build_tokenizer(reader) -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind, pre = _meta(reader, "tokenizer.ggml.model"), _meta(reader, "tokenizer.ggml.pre", "gpt-2")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer type {kind!r} (only 'gpt2' byte-level BPE)")
    if pre not in _PRE_DIGITS | _PRE_GPT2:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}")
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    merges = _meta(reader, "tokenizer.ggml.merges")
    types = _meta(reader, "tokenizer.ggml.token_type", [])
    if not tokens or not merges:
        raise ValueError("GGUF file has no BPE vocab/merges")

    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges], fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if pre in _PRE_DIGITS
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == _CONTROL])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i, t in enumerate(types) if t == _USER_DEFINED])

    special = _special_tokens(reader, tokens)
    # Prepend BOS only if the GGUF says so (SmolLM2: no). Same processor transformers 5 derives from add_bos_token.
    b = special.get("bos") if _meta(reader, "tokenizer.ggml.add_bos_token", False) else None
    tok.post_processor = processors.TemplateProcessing(
        single=f"{b}:0 $A:0" if b else "$A:0",
        pair=f"{b}:0 $A:0 {b}:1 $B:1" if b else "$A:0 $B:1",
        special_tokens=[(b, vocab[b])] if b else [],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{f"{k}_token": v for k, v in special.items()},
        chat_template=_meta(reader, "tokenizer.chat_template"),
        model_max_length=_meta(reader, f"{_meta(reader, 'general.architecture')}.context_length", 2048),
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: llama's generate() rejects them
        add_bos_token=b is not None,
        add_eos_token=False,
    )


def tokenizer_from_gguf(gguf_file: Path) -> PreTrainedTokenizerFast:
    """Rebuild the (fast) tokenizer, special tokens and chat template from the GGUF metadata."""
    return _build_tokenizer(_open(gguf_file))


def _llama_config(reader, tokenizer, tied: bool) -> dict:
    """A LlamaForCausalLM config.json dict, with legacy keys older transformers (4.46+) also read."""
    a = "llama."
    heads = _meta(reader, a + "attention.head_count")
    hidden = _meta(reader, a + "embedding_length")
    scaling = _meta(reader, a + "rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ValueError(f"unsupported RoPE scaling {scaling!r} in GGUF file")
    ids = {f"{k}_token_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{k}_token"))
           for k in ("bos", "eos", "pad") if getattr(tokenizer, f"{k}_token") is not None}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": _meta(reader, a + "vocab_size", len(tokenizer)),
        "hidden_size": hidden,
        "intermediate_size": _meta(reader, a + "feed_forward_length"),
        "num_hidden_layers": _meta(reader, a + "block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _meta(reader, a + "attention.head_count_kv", heads),
        "head_dim": _meta(reader, a + "rope.dimension_count", hidden // heads),
        "max_position_embeddings": _meta(reader, a + "context_length"),
        "rms_norm_eps": float(f"{_meta(reader, a + 'attention.layer_norm_rms_epsilon', 1e-5):.7g}"),  # f32 -> 1e-05
        "rope_theta": _meta(reader, a + "rope.freq_base", 10000.0),
        "rope_scaling": {"type": "linear", "rope_type": "linear", "factor": _meta(reader, a + "rope.scaling.factor")}
        if scaling == "linear" else None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "torch_dtype": "float32",
        **ids,
    }


def _reverse_permute(w, n_head: int):
    """Undo llama.cpp's q/k row permutation (interleaved -> HF half-split rotary layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_weights(reader, config: dict, log: Callable[[str], None]) -> dict:
    """Dequantize every tensor to a dense fp32 torch tensor under its HF name."""
    import numpy as np
    import torch
    from gguf import dequantize

    names = {}
    for gguf_pat, hf_pat in _LLAMA_TENSORS.items():
        for i in range(config["num_hidden_layers"]) if "{}" in gguf_pat else [None]:
            names[gguf_pat.format(i) + ".weight"] = hf_pat.format(i) + ".weight"
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out = {}
    for n, t in enumerate(reader.tensors):
        if t.name not in names:
            raise ValueError(f"unexpected tensor {t.name!r} in GGUF file (unsupported llama variant)")
        w = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])  # GGUF dims: innermost first
        if (kind := t.name.split(".")[-2]) in heads:
            w = _reverse_permute(w, heads[kind])
        out[names[t.name]] = torch.from_numpy(np.array(w, dtype=np.float32))  # own, writable, contiguous copy
        if n % 50 == 0:
            log(f"dequantized {n + 1}/{len(reader.tensors)} tensors")
    missing = [hf for g, hf in names.items() if hf not in out and g != "output.weight"]
    if missing:
        raise ValueError(f"GGUF file is missing tensors, e.g. {missing[0]}")
    return out


def convert_gguf_to_hf(gguf_file: Path, out_dir: Path, log: Callable[[str], None] | None = None) -> None:
    """Convert a GGUF chat model into a plain Hugging Face folder in out_dir (exists, empty):
    config.json, generation_config.json, model.safetensors (dense fp32 weights), tokenizer.json,
    tokenizer_config.json / special tokens, and the chat template stored in the GGUF."""
    from safetensors.torch import save_file

    log = log or (lambda _msg: None)
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    reader = _open(gguf_file)
    arch = _meta(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF model architecture {arch!r} (only 'llama')")

    log("building tokenizer from GGUF metadata")
    tokenizer = _build_tokenizer(reader)
    tied = all(t.name != "output.weight" for t in reader.tensors)
    config = _llama_config(reader, tokenizer, tied)
    log(f"dequantizing {len(reader.tensors)} tensors to float32")
    weights = _llama_weights(reader, config, log)
    if weights["model.embed_tokens.weight"].shape[0] != config["vocab_size"]:
        config["vocab_size"] = weights["model.embed_tokens.weight"].shape[0]

    log(f"writing Hugging Face folder {out_dir}")
    _write_json(out_dir / "config.json", config)
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod((out_dir / "config.json").stat().st_mode)  # save_file makes it 0600
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    _write_json(out_dir / "generation_config.json", gen)
    _save_tokenizer(tokenizer, out_dir)


def _save_tokenizer(tokenizer, out_dir: Path) -> None:
    """save_pretrained, then make tokenizer_config.json readable by transformers 4.x as well as 5.x."""
    tokenizer.save_pretrained(out_dir)
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # 5.x writes "TokenizersBackend", unknown to 4.x
    cfg["chat_template"] = tokenizer.chat_template  # 4.x < 4.50 ignores chat_template.jinja
    _write_json(path, cfg)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
