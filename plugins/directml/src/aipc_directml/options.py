"""The directml backend's ``-o`` options: the model builder's quantization settings and AutoRound's
(part of the artifact's cache key) and the runtime's thread count, checked and turned into a recipe:
builder arguments, and AutoRound's settings where it quantizes first."""

from __future__ import annotations

from aipc.errors import InvalidConfigError
from aipc.options import check_options as _check

from .autoround import MAX_SAMPLES
from .devices import NAME, TARGETS, device_name

#: -o options that change the artifact (the core keys its cache on them), with their help.
QUANTIZE_OPTIONS = {
    "block_size": "int4/int8: weights per quantization block, 16/32/64/128/256 (builder default 32)",
    "accuracy_level": "int4/int8: minimum MatMul compute precision, 1=fp32 2=fp16 3=bf16 4=int8 "
    "(builder default: 4 on CPU, 0 on DML)",
    "algo_config": "int4/int8: rounding method: the builder's default/rtn/k_quant, or autoround (Intel's "
    "AutoRound tunes the rounding on calibration text, then the builder reads its weights; int8 symmetric only; "
    "the int4 CPU default for models with hidden size < 1024)",
    "iters": "autoround: tuning steps per layer block (default 50; 0 = AutoRound's data-free RTN)",
    "dataset": "autoround: calibration text, self (default: the model's own answers to fixed prompts, made once "
    "and cached; no hub) or a .txt (blank-line separated) / .jsonl (\"text\" fields) file",
    "num_samples": "autoround: calibration samples (default 32 for self, at most 64; all of a file up to 64)",
    "is_symmetric": "int4/int8: true or false (default true, but false for int8 on CPU; a tied embedding "
    "then gets its own quantized copy)",
    "matmul_mixed_precision": "int4: int8 for some MatMuls, e.g. last_matmul:int8 (the LM head), "
    "last_matmul:int8,mixed_layers:int8 (default on CPU for hidden size >= 1024: mixed_layers:int8); none = all int4 "
    "(a tied embedding gets its own int4 copy unless none)",
}
#: Options of AutoRound (algo_config=autoround), not the builder's.
AUTOROUND_OPTIONS = ("iters", "dataset", "num_samples")
AUTOROUND_ITERS = "50"
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
#: point per block): 27 of 27 evaluation answers kept against 26 for symmetric (88 of 94 against 87 on
#: the 150-question set), same tuning answers, same decode speed, +4 MB
#: (results/sweep-directml-int8-recipes.json, eval150-directml-int8.json). The dml target stays the
#: builder's until measured on DirectML.
DEFAULTS: dict[tuple[str, str], dict[str, str]] = {
    ("int4", "cpu"): {"matmul_mixed_precision": "mixed_layers:int8"},
    ("int8", "cpu"): {"is_symmetric": "false"},
}
#: Below this hidden size a model counts as small (as for the openvino backend). A small model's int4
#: on cpu: AutoRound (SignRound, 50 steps per block, on the model's own calibration text), all int4,
#: read by the builder. On SmolLM2-135M (Intel Xeon, results/sweep-directml-int4-autoround.json) it
#: keeps 16 of 19 tuning answers (the mixed recipe 15, the builder's all-int4 11) and 24 of 27
#: evaluation answers (24, 21; on the 150-question set 71 of 94: 74, 66, differences within noise),
#: first answer token 0.94 (0.84, 0.82); on the 160-question tuning set 67 of 104 (71, 59;
#: results/tuning160-directml-int4.json), at all-int4 size (92 MB against
#: 118) and decode speed (1.06x the mixed recipe, 1.02x all-int4), quantized in 104 s (1 thread,
#: calibration text included; the builder alone 5-16 s). Tried beside it and not taken: 100 or 200 steps,
#: asymmetric, and AutoRound with the mixed recipe's int8 layers (18/19 tuning but 21/27 eval).
#: On a 3.8B model the tuning would take about 30x as long on such a CPU, so larger models keep the
#: mixed recipe above; -o algo_config=autoround asks for it.
SMALL_MODEL_HIDDEN = 1024
SMALL_DEFAULTS: dict[tuple[str, str], dict[str, str]] = {("int4", "cpu"): {"algo_config": "autoround"}}
#: Part of the artifact's cache key (plugin.py): artifacts built with earlier defaults are rebuilt.
RECIPE = "5"


def check_options(options: dict[str, str]) -> None:
    """The core checks names before a hook is reached; this covers direct hook calls."""
    _check(NAME, options, {**QUANTIZE_OPTIONS, **RUN_OPTIONS})


def defaults(precision: str, target: str, hidden_size: int | None = None) -> dict[str, str]:
    """The recipe (precision, builder target) gets unless ``-o`` says otherwise, by model size."""
    if hidden_size and hidden_size < SMALL_MODEL_HIDDEN and (precision, target) in SMALL_DEFAULTS:
        return dict(SMALL_DEFAULTS[(precision, target)])
    return dict(DEFAULTS.get((precision, target), {}))


def builder_options(precision: str, device: str, options: dict[str, str], tied_embeddings: bool,
                    hidden_size: int | None = None) -> dict[str, str]:
    """The recipe for the user's ``-o`` options over this target's defaults, validated: the builder's
    ``--extra_options``, and with ``algo_config=autoround`` AutoRound's settings (see :func:`autoround_settings`)."""
    check_options(options)
    given = {k: v.strip() for k, v in options.items() if k in QUANTIZE_OPTIONS}
    if given and precision not in ("int4", "int8"):
        raise InvalidConfigError(f"option(s) {', '.join(sorted(given))} apply to int4/int8 only, not {precision}")
    recipe = defaults(precision, TARGETS[device_name(device)], hidden_size)
    if "algo_config" in given or given.get("matmul_mixed_precision", "none") != "none":
        recipe.pop("algo_config", None)  # the user's rounding method, or the builder's mixed precision
    if given.get("algo_config") == "autoround":
        recipe.pop("matmul_mixed_precision", None)
        if precision == "int8":
            recipe.pop("is_symmetric", None)  # AutoRound writes 8-bit weights symmetric only
    chosen = {**recipe, **given}
    if chosen.get("algo_config") == "autoround":
        return _autoround_recipe(precision, chosen)
    if any(k in chosen for k in AUTOROUND_OPTIONS):
        names = [k for k in AUTOROUND_OPTIONS if k in chosen]
        raise InvalidConfigError(f"{' and '.join(names)} {'apply' if len(names) > 1 else 'applies'} with "
                                 "algo_config=autoround only")
    _check_block_options(chosen)
    if "algo_config" in chosen and chosen["algo_config"] not in ("default", "rtn", "k_quant"):
        raise InvalidConfigError(f"algo_config must be default, rtn, k_quant or autoround, got {chosen['algo_config']!r}")
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


def _autoround_recipe(precision: str, chosen: dict[str, str]) -> dict[str, str]:
    """int4, or int8 symmetric only (AutoRound exports no asymmetric 8-bit GPTQ-format weights)."""
    if chosen.get("matmul_mixed_precision", "none") != "none":
        raise InvalidConfigError("matmul_mixed_precision does not combine with algo_config=autoround (one bit width throughout)")
    chosen.pop("matmul_mixed_precision", None)
    iters = chosen.setdefault("iters", AUTOROUND_ITERS)
    if not iters.isdigit() or int(iters) > 10000:
        raise InvalidConfigError(f"iters must be a whole number from 0 to 10000, got {iters!r}")
    if not chosen.setdefault("dataset", "self"):
        raise InvalidConfigError("dataset is empty: use self or a text file")
    samples = chosen.get("num_samples")
    if samples is not None and (not samples.isdigit() or not 1 <= int(samples) <= MAX_SAMPLES):
        raise InvalidConfigError(f"num_samples must be a whole number from 1 to {MAX_SAMPLES}, got {samples!r}")
    _check_block_options(chosen)
    if precision == "int8" and chosen.setdefault("is_symmetric", "true") == "false":
        raise InvalidConfigError("algo_config=autoround writes int8 symmetric only: drop is_symmetric=false")
    return chosen


def _check_block_options(chosen: dict[str, str]) -> None:
    """Check the options the builder and AutoRound share; ``is_symmetric`` is normalised in place."""
    if "block_size" in chosen and chosen["block_size"] not in _BLOCK_SIZES:
        raise InvalidConfigError(f"block_size must be one of {', '.join(_BLOCK_SIZES)}, got {chosen['block_size']!r}")
    if "accuracy_level" in chosen and chosen["accuracy_level"] not in ("0", "1", "2", "3", "4"):
        raise InvalidConfigError(f"accuracy_level must be 0-4, got {chosen['accuracy_level']!r}")
    if "is_symmetric" in chosen:
        value = chosen["is_symmetric"].lower()
        if value not in ("true", "false", "1", "0"):
            raise InvalidConfigError(f"is_symmetric must be true or false, got {chosen['is_symmetric']!r}")
        chosen["is_symmetric"] = "false" if value in ("false", "0") else "true"


def autoround_settings(recipe: dict[str, str], precision: str = "int4") -> tuple[dict, dict[str, str]]:
    """AutoRound's settings and the builder's ``--extra_options`` of an ``algo_config=autoround`` recipe.
    The builder gets only what still applies to a quantized checkpoint: the compute precision, and
    the block size for the LM head it quantizes itself (symmetric: shared with a tied embedding)."""
    settings = {"bits": 8 if precision == "int8" else 4, "group_size": int(recipe.get("block_size", "32")),
                "sym": recipe.get("is_symmetric", "true") == "true", "iters": int(recipe["iters"]), "seqlen": 96}
    extra = {k: recipe[k] for k in ("accuracy_level", "block_size") if k in recipe}
    return settings, extra
