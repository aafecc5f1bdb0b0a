"""Helpers for plugin authors: what an artifact folder must carry and what to read from it.

A backend's ``aipc_quantize`` writes its runtime's model files; the core renders the chat template
and the streaming decoders read the tokenizer from the same folder, so every artifact also carries
the source's :data:`SIDE_FILES`. The core copies the ones a backend did not write after
``aipc_quantize`` returns (:func:`copy_side_files`), so a backend cannot forget them; a backend may
call it itself when its runtime needs them before that (e.g. to convert the tokenizer).

At load time :func:`eos_token_ids` and :func:`context_length` read the Hugging Face config files a
runtime may not expose, and :func:`load_error` turns a runtime's exception into the one-line
:class:`aipc.errors.InvalidModelError` the hookspec asks for. Nothing here imports a runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .errors import InvalidModelError

#: Files of a Hugging Face folder that every artifact keeps beside the runtime's own files: the
#: model config (``model_type``, EOS ids, context length), the tokenizer in its several forms, and
#: the chat template (``chat_template.jinja``, ``chat_template.json`` or ``tokenizer_config.json``'s
#: ``chat_template``), which the core renders for every backend (:mod:`aipc.chat`).
SIDE_FILES = (
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt",
    "chat_template.jinja", "chat_template.json",
)


def copy_side_files(source_dir: Path, output_dir: Path, names: tuple[str, ...] = SIDE_FILES) -> list[str]:
    """Copy the ``names`` that ``source_dir`` has and ``output_dir`` lacks (nothing is overwritten);
    return the names copied."""
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    copied = []
    for name in names:
        if (source_dir / name).is_file() and not (output_dir / name).exists():
            shutil.copy2(source_dir / name, output_dir / name)
            copied.append(name)
    return copied


def read_config(folder: Path, name: str = "config.json") -> dict[str, Any]:
    """A JSON file of ``folder`` as a dict; ``{}`` when it is absent or unreadable."""
    try:
        data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _ids(value: Any) -> set[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return {int(v) for v in values if isinstance(v, int) and v >= 0}


def eos_token_ids(folder: Path) -> set[int]:
    """Every token id that ends generation: ``eos_token_id`` of ``config.json`` (or its
    ``text_config``) and of ``generation_config.json``, each an id or a list of ids."""
    config = read_config(folder)
    ids = _ids(config.get("eos_token_id")) | _ids(config.get("text_config", {}).get("eos_token_id"))
    return ids | _ids(read_config(folder, "generation_config.json").get("eos_token_id"))


def context_length(config: Path | dict[str, Any], phi3_original: bool = False) -> int | None:
    """The model's context in tokens from a Hugging Face config (a folder or its ``config.json``
    as a dict): ``max_position_embeddings``, else ``n_positions``, else ``seq_length``, of the
    ``text_config`` where there is one; None when none is given.

    ``phi3_original``: for a Phi-3 with LongRoPE, its ``original_max_position_embeddings`` (4096),
    the context of runtimes that export it without the long factors (optimum-intel's export)."""
    data = read_config(config) if isinstance(config, (str, Path)) else config
    data = data.get("text_config", data)
    value = data.get("max_position_embeddings") or data.get("n_positions") or data.get("seq_length")
    if phi3_original and data.get("model_type") == "phi3" and data.get("original_max_position_embeddings"):
        value = data["original_max_position_embeddings"]
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def longrope_original(config: Path | dict[str, Any]) -> int | None:
    """A LongRoPE model's original context (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini: short and
    long rotary factors, the long ones for every position once the sequence is longer), from a
    Hugging Face config (a folder or its ``config.json`` as a dict); None for any other model.
    Give it to :class:`aipc.prefix.PrefixCache` so that no state is reused across it."""
    data = read_config(config) if isinstance(config, (str, Path)) else config
    data = data.get("text_config", data)
    rope = data.get("rope_scaling") or data.get("rope_parameters") or {}
    original = data.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
    if rope.get("rope_type", rope.get("type")) == "longrope" and isinstance(original, int) and original > 0:
        return original
    return None


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to ``limit``."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


def load_error(folder: Path, error: BaseException) -> InvalidModelError:
    """The error for a runtime that failed to load ``folder`` (missing, truncated or corrupt files):
    ``raise load_error(folder, error) from None`` in ``aipc_load``."""
    return InvalidModelError(f"cannot load {folder}: {first_line(error)}")
