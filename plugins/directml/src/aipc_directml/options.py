"""The directml backend's ``-o`` options: the model builder's quantization settings (part of the
artifact's cache key) and the runtime's thread count, checked and turned into builder arguments."""

from __future__ import annotations

from aipc.errors import InvalidConfigError
from aipc.options import check_options as _check

from .devices import NAME

#: -o options that change the artifact (the core keys its cache on them), with their help.
QUANTIZE_OPTIONS = {
    "block_size": "int4/int8: weights per quantization block, 16/32/64/128/256 (builder default 32)",
    "accuracy_level": "int4/int8: minimum MatMul compute precision, 1=fp32 2=fp16 3=bf16 4=int8 "
    "(builder default: 4 on CPU, 0 on DML)",
    "algo_config": "int4/int8: rounding method, default/rtn/k_quant",
    "is_symmetric": "int4/int8: true (default) or false; false breaks models with tied embeddings",
    "matmul_mixed_precision": "int4: e.g. last_matmul:int8; breaks models with tied embeddings",
}
RUN_OPTIONS = {"threads": "ONNX Runtime intra-op threads (default: the runtime's; env AIPC_NUM_THREADS)"}
_BLOCK_SIZES = ("16", "32", "64", "128", "256")


def check_options(options: dict[str, str]) -> None:
    """The core checks names before a hook is reached; this covers direct hook calls."""
    _check(NAME, options, {**QUANTIZE_OPTIONS, **RUN_OPTIONS})


def builder_options(precision: str, device: str, options: dict[str, str], tied_embeddings: bool) -> dict[str, str]:
    """The builder's ``--extra_options`` for the user's ``-o`` options, validated."""
    check_options(options)
    chosen = {k: v.strip() for k, v in options.items() if k in QUANTIZE_OPTIONS}
    if chosen and precision not in ("int4", "int8"):
        raise InvalidConfigError(f"option(s) {', '.join(sorted(chosen))} apply to int4/int8 only, not {precision}")
    if "block_size" in chosen and chosen["block_size"] not in _BLOCK_SIZES:
        raise InvalidConfigError(f"block_size must be one of {', '.join(_BLOCK_SIZES)}, got {chosen['block_size']!r}")
    if "accuracy_level" in chosen and chosen["accuracy_level"] not in ("0", "1", "2", "3", "4"):
        raise InvalidConfigError(f"accuracy_level must be 0-4, got {chosen['accuracy_level']!r}")
    if "algo_config" in chosen and chosen["algo_config"] not in ("default", "rtn", "k_quant"):
        raise InvalidConfigError(f"algo_config must be default, rtn or k_quant, got {chosen['algo_config']!r}")
    if "is_symmetric" in chosen:
        value = chosen["is_symmetric"].lower()
        if value not in ("true", "false", "1", "0"):
            raise InvalidConfigError(f"is_symmetric must be true or false, got {chosen['is_symmetric']!r}")
        chosen["is_symmetric"] = "false" if value in ("false", "0") else "true"
    if "matmul_mixed_precision" in chosen and precision != "int4":
        raise InvalidConfigError("matmul_mixed_precision applies to int4 only")
    if tied_embeddings and (chosen.get("is_symmetric") == "false" or "matmul_mixed_precision" in chosen):
        raise InvalidConfigError(
            "this model ties its input and output embeddings: the builder's is_symmetric=false and "
            "matmul_mixed_precision produce a broken model for it (measured on SmolLM2); leave them out"
        )
    return chosen
