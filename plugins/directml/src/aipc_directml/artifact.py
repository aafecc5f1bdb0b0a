"""Reading an onnxruntime-genai model folder: its config, what it was built for, its precision.

A folder is ours to load when it has ``genai_config.json`` (what the model builder writes, and
what downloaded layouts such as ``microsoft/Phi-3-mini-4k-instruct-onnx``'s subfolders carry).
Only :func:`precision_of` imports ``onnx`` (to read the graph, not the weights).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from aipc.errors import InvalidModelError, UnsupportedArchitectureError

CONFIG = "genai_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def read_config(folder: Path) -> dict[str, Any]:
    """``genai_config.json`` as a dict, or InvalidModelError saying what is wrong."""
    path = Path(folder) / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidModelError(f"{folder} has no {CONFIG}: not an onnxruntime-genai model folder") from None
    except (OSError, ValueError) as error:
        raise InvalidModelError(f"{path} is corrupt: {str(error).splitlines()[0]}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise InvalidModelError(f"{path} is corrupt: no 'model' section")
    return config


def decoder_file(folder: Path, config: dict[str, Any]) -> Path:
    decoder = config["model"].get("decoder") or {}
    name = decoder.get("filename") if isinstance(decoder, dict) else None
    if not name:
        raise InvalidModelError(f"{Path(folder) / CONFIG} names no decoder model file")
    return Path(folder) / name


def check_files(folder: Path, config: dict[str, Any]) -> None:
    """Raise InvalidModelError when a file the runtime needs is missing or obviously truncated."""
    folder = Path(folder)
    model_file = decoder_file(folder, config)
    if not model_file.is_file() or model_file.stat().st_size == 0:
        raise InvalidModelError(f"{folder} is incomplete: the model file {model_file.name} is missing or empty")
    data = model_file.with_name(model_file.name + ".data")
    if data.exists() and data.stat().st_size == 0:
        raise InvalidModelError(f"{folder} is incomplete: the weights file {data.name} is empty")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidModelError(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model)")


def built_for(config: dict[str, Any]) -> str:
    """The execution provider the builder targeted: "dml", "cuda", ... or "cpu" (none named)."""
    decoder = config["model"].get("decoder") or {}
    options = (decoder.get("session_options") or {}).get("provider_options") or []
    for entry in options:
        if isinstance(entry, dict):
            for name in entry:
                return str(name).lower()
    return "cpu"


def check_rotary(hf: dict[str, Any]) -> None:
    """Refuse, before any work, a partial rotary shape onnxruntime-genai's attention cannot run: its
    GroupQueryAttention wants the cos cache (half the rotated dimensions) at most half the head
    and a multiple of 8, and says so only when generating ("cos_cache dimension 1 must be <=
    head_size / 2 and a multiple of 8"). Phi-4-mini (head 128, 0.75 rotated: 48) passes."""
    hf = hf.get("text_config", hf)
    heads, hidden = hf.get("num_attention_heads"), hf.get("hidden_size")
    if not heads or not hidden:
        return
    head = int(hf.get("head_dim") or hidden // heads)
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    factor = float(hf.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1.0)
    cos = int(head * factor) // 2
    if cos % 8 or cos > head // 2:
        raise UnsupportedArchitectureError(
            f"onnxruntime-genai cannot run this model's rotary shape: {int(head * factor)} of {head} head dimensions "
            f"rotate (partial_rotary_factor {factor:g}), and its attention needs half of that ({cos}) to be a "
            f"multiple of 8 and at most {head // 2}")


def context_length(config: dict[str, Any]) -> int | None:
    value = config["model"].get("context_length") or (config.get("search") or {}).get("max_length")
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


_FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16"}  # onnx.TensorProto data types
_INT8_TYPES = {2, 3}  # UINT8, INT8
_INT4_TYPES = {21, 22}  # UINT4, INT4


def precision_of(folder: Path) -> str | None:
    """The precision of the weights of a genai model folder, read from its graph.

    MatMulNBits (the builder's int4/int8 weight-only format) gives its ``bits`` (the fewest
    across the graph, as mixed recipes keep some layers at 8); a QDQ graph
    gives the type of its quantized weights; otherwise the type of the float weights. Returns
    None for what aipc has no name for (bf16) or a folder that is not readable.
    """
    try:
        config = read_config(folder)
        model_file = decoder_file(folder, config)
        import onnx

        graph = onnx.load(str(model_file), load_external_data=False).graph
    except Exception:  # not ours, or unreadable: the caller treats None as "not recognised"
        return None
    # A mixed recipe (mixed_layers:int8) keeps some layers at 8 bits: the narrowest names the model.
    bits = [
        next((a.i for a in node.attribute if a.name == "bits"), 4)
        for node in graph.node
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized")
    ]
    if bits:
        return "int4" if min(bits) <= 4 else "int8"
    kinds = [init.data_type for init in graph.initializer if len(init.dims) >= 2]
    if any(t in _INT4_TYPES for t in kinds):
        return "int4"
    if any(t in _INT8_TYPES for t in kinds) and any(n.op_type == "DequantizeLinear" for n in graph.node):
        return "int8"
    floats = Counter(_FLOAT_TYPES[t] for t in kinds if t in _FLOAT_TYPES)
    if floats:
        kind = floats.most_common(1)[0][0]
        return kind if kind in ("fp32", "fp16") else None
    return None
