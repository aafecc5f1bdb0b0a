"""The directml backend's ``-o`` options: the model builder's quantization settings (part of the
artifact's cache key) and the runtime's thread count, checked and turned into builder arguments."""

from __future__ import annotations

from aipc.errors import InvalidConfigError
from aipc.options import check_options as _check

from .devices import NAME, TARGETS, device_name

#: -o options that change the artifact (the core keys its cache on them), with their help.
QUANTIZE_OPTIONS = {
    "block_size": "int4/int8: weights per quantization block, 16/32/64/128/256 (builder default 32)",
    "accuracy_level": "int4/int8: minimum MatMul compute precision, 1=fp32 2=fp16 3=bf16 4=int8 "
    "(builder default: 4 on CPU, 0 on DML)",
    "algo_config": "int4/int8: rounding method, default/rtn/k_quant",
    "is_symmetric": "int4/int8: true or false (default true, but false for int8 on CPU; a tied embedding "
    "then gets its own quantized copy)",
    "matmul_mixed_precision": "int4: int8 for some MatMuls, e.g. last_matmul:int8 (the LM head), "
    "last_matmul:int8,mixed_layers:int8 (default on CPU: mixed_layers:int8); none = all int4 "
    "(a tied embedding gets its own int4 copy unless none)",
}
RUN_OPTIONS = {"threads": "ONNX Runtime intra-op threads (default: the runtime's; env AIPC_NUM_THREADS)"}
_BLOCK_SIZES = ("16", "32", "64", "128", "256")
_SELECTORS = ("last_matmul", "mixed_layers")
#: Options that make a tied embedding unshareable: the builder then names the LM head's quantized
#: weights one way and reads them for the embedding (GatherBlockQuantized) another, and the model is
#: broken (SmolLM2, onnxruntime-genai 0.18.0). Such a model gets an own int4 copy of its embedding
#: instead (+ about 17 MB on SmolLM2-135M): checked to answer right with each of them.
_UNTIED = {"shared_embeddings": "false", "op_types_to_quantize": "MatMul/Gather"}

#: The recipe each (precision, builder target) gets unless ``-o`` says otherwise; the manifest records
#: it. Absent = the builder's own (int4: block 32, symmetric RTN, accuracy_level 4 on cpu / 0 on dml,
#: LM head shared with the embedding, int4). int4 on cpu: the builder's int8 for its most
#: quantization-sensitive MatMuls (llama.cpp's choice: the first and last eighth of the layers and
#: every third layer's qkv / v / down projections); on SmolLM2-135M it keeps 24 of the 27 evaluation
#: answers the builder's plain int4 keeps 21 of, at 0.93x-1.04x its decode speed (by CPU) and +28 MB
#: (benchmarks/README.md, results/sweep-directml-int4-mixed.json). int8 on cpu: asymmetric (a zero
#: point per block): 27 of 27 evaluation answers kept against 26 for symmetric, same tuning answers,
#: same decode speed, +4 MB (results/sweep-directml-int8-recipes.json). The dml target stays the
#: builder's until measured on DirectML.
DEFAULTS: dict[tuple[str, str], dict[str, str]] = {
    ("int4", "cpu"): {"matmul_mixed_precision": "mixed_layers:int8"},
    ("int8", "cpu"): {"is_symmetric": "false"},
}
#: Part of the artifact's cache key (plugin.py): artifacts built with earlier defaults are rebuilt.
RECIPE = "4"


def check_options(options: dict[str, str]) -> None:
    """The core checks names before a hook is reached; this covers direct hook calls."""
    _check(NAME, options, {**QUANTIZE_OPTIONS, **RUN_OPTIONS})


def builder_options(precision: str, device: str, options: dict[str, str], tied_embeddings: bool) -> dict[str, str]:
    """The builder's ``--extra_options`` for the user's ``-o`` options over this target's defaults, validated."""
    check_options(options)
    chosen = {k: v.strip() for k, v in options.items() if k in QUANTIZE_OPTIONS}
    if chosen and precision not in ("int4", "int8"):
        raise InvalidConfigError(f"option(s) {', '.join(sorted(chosen))} apply to int4/int8 only, not {precision}")
    chosen = {**DEFAULTS.get((precision, TARGETS[device_name(device)]), {}), **chosen}
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
    if "matmul_mixed_precision" in chosen:
        mixed = chosen["matmul_mixed_precision"].replace(" ", "")
        if precision != "int4":
            raise InvalidConfigError("matmul_mixed_precision applies to int4 only")
        pairs = [] if mixed == "none" else [pair.partition(":") for pair in mixed.split(",")]
        if any(k not in _SELECTORS or v not in ("int4", "int8") or not sep for k, sep, v in pairs):
            raise InvalidConfigError(f"matmul_mixed_precision must be none or SELECTOR:int4|int8[,...] with SELECTOR "
                                     f"{' or '.join(_SELECTORS)}, got {chosen['matmul_mixed_precision']!r}")
        chosen["matmul_mixed_precision"] = mixed
        if mixed == "none":
            del chosen["matmul_mixed_precision"]
    if tied_embeddings and ("matmul_mixed_precision" in chosen or chosen.get("is_symmetric") == "false"):
        chosen.update(_UNTIED)
    return chosen
