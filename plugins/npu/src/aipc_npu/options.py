"""The ``-o KEY=VALUE`` options of the NPU backend: what they mean and how they are checked.

No heavy import here: the plugin module imports this to describe itself. Lowercase keys are
aipc's own and must be known (a typo is an error). UPPERCASE keys go to OpenVINO GenAI's NPU
pipeline (default engine): the documented ones below are checked, any other UPPERCASE key
(``NPUW_*``, ``NPU_*``, ``KV_CACHE_PRECISION``...) is passed through unchanged.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import InvalidConfigError
from aipc.types import option_bool, option_int
from aipc_openvino_common.export import ALGORITHMS, DataAware, data_aware_options

from .devices import ENGINE_ENV, ENGINES

#: Options that change the artifact (the core's cache key includes them).
QUANTIZE_OPTIONS = {
    "engine": f"openvino (default: OpenVINO GenAI on NPU) or library (Intel NPU Acceleration Library); env {ENGINE_ENV}",
    "group_size": "openvino engine, int4: group size, a multiple of 64 (default 128 up to ~5B parameters; -1 = channel-wise, the default above)",
    "ratio": "openvino engine, int4: share of weights in int4 (default 1.0, as the NPU wants)",
    "sym": "openvino engine: symmetric weights (default true: the NPU runs symmetric int4/int8)",
    "group_size_fallback": ("openvino engine, int4: when the group size does not divide a layer's input size "
                            "(SmolLM2's 576 with 128): adjust (default: the whole model takes the largest "
                            "multiple of 64 that divides every layer, 64 for SmolLM2, else channel-wise), "
                            "channelwise, or error"),
    "awq": "openvino engine, int4: activation-aware weight quantization (data-aware with a dataset; default false)",
    "scale_estimation": "openvino engine, int4: scale estimation (needs dataset; default false)",
    "gptq": "openvino engine, int4: GPTQ (needs dataset; default false)",
    "lora_correction": "openvino engine, int4: LoRA correction (needs dataset; slow; default false)",
    "dataset": "openvino engine, int4: calibration text: self (the source model's own answers, generated once and "
               "cached), a text file or .jsonl, a hub name (wikitext2; needs the hub), or none",
    "num_samples": "openvino engine, int4: calibration samples (default 32 for self; all of a file)",
}
#: int4-only options of the openvino engine (the library engine has none of them).
INT4_OPTIONS = ("group_size", "ratio", "group_size_fallback", "awq", "scale_estimation", "gptq", "lora_correction",
                "dataset", "num_samples")

#: Options read when loading (not part of the cache key).
RUNTIME_OPTIONS = {
    "MAX_PROMPT_LEN": "openvino engine: longest prompt the NPU pipeline is compiled for (default 1024)",
    "MIN_RESPONSE_LEN": "openvino engine: tokens reserved for the answer beyond the prompt (default 128)",
    "GENERATE_HINT": "openvino engine: FAST_COMPILE or BEST_PERF (the NPU pipeline's default if unset)",
    "PREFILL_HINT": "openvino engine: STATIC or DYNAMIC (the NPU pipeline's default if unset)",
    "CACHE_DIR": "openvino engine: compiled-model cache (default: aipc's cache; the first NPU compile takes tens of seconds)",
    "threads": "CPU threads of the CPU stand-in / library engine (env AIPC_NUM_THREADS)",
}

HELP = {
    **QUANTIZE_OPTIONS,
    **RUNTIME_OPTIONS,
    "KEY": "any other UPPERCASE property goes to the NPU pipeline (e.g. NPUW_LLM_OPTIMIZE_V_TENSORS=NO)",
}

DEFAULT_MAX_PROMPT_LEN = 1024
DEFAULT_MIN_RESPONSE_LEN = 128
HINTS = {"GENERATE_HINT": ("FAST_COMPILE", "BEST_PERF"), "PREFILL_HINT": ("STATIC", "DYNAMIC")}
#: OpenVINO documents group-wise int4 (group 128) for NPU models up to ~5B parameters and
#: channel-wise above.
CHANNEL_WISE_ABOVE = 5_000_000_000
FALLBACKS = ("adjust", "channelwise", "error")
#: NPUW (the NPU plugin's LLM layer) decompresses int4 groups whose size is a multiple of 64:
#: group 32 fails at compile with "NPUW: Assertion from_shape.back() % 64 == 0" (measured).
NPU_GROUP_MULTIPLE = 64


def check_known(options: dict[str, str]) -> None:
    for key in options:
        if key.isupper():
            continue
        if key not in QUANTIZE_OPTIONS and key not in RUNTIME_OPTIONS:
            known = ", ".join(sorted(k for k in {**QUANTIZE_OPTIONS, **RUNTIME_OPTIONS} if not k.isupper()))
            raise InvalidConfigError(f"unknown option {key!r} for the npu backend (it knows: {known}, and UPPERCASE NPU properties)")


def engine(options: dict[str, str]) -> str:
    """The engine chosen by ``-o engine=``, else ``AIPC_NPU_ENGINE``, else ``openvino``."""
    value = (options.get("engine") or os.environ.get(ENGINE_ENV) or "openvino").strip().lower()
    if value not in ENGINES:
        raise InvalidConfigError(f"engine must be one of {', '.join(ENGINES)}, got {value!r}")
    return value


# ------------------------------------------------------------------ quantize (openvino engine)


@dataclass
class ExportPlan(DataAware):
    """How the openvino engine compresses weights: what the export runs and the manifest records."""

    weight_format: str  # fp16 | int8 | int4
    sym: bool = True
    group_size: int | None = None
    ratio: float | None = None
    parameters: int | None = None
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None and k != "notes"}
        for key in ALGORITHMS:
            if not data[key]:
                del data[key]
        data["engine"] = "openvino"
        return data

    def int4_config(self) -> dict[str, Any]:
        """The NNCF settings besides bits, sym and the calibration text; the group size divides
        every layer (plan_export), so NNCF needs no fallback."""
        return dict(group_size=self.group_size, ratio=self.ratio, awq=self.awq, scale_estimation=self.scale_estimation,
                    gptq=self.gptq, lora_correction=self.lora_correction, num_samples=self.num_samples)


def count_parameters(folder: Path) -> int | None:
    """Parameters of a Hugging Face folder, from the safetensors headers (no weights read)."""
    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    for file in files:
        try:
            with open(file, "rb") as fh:
                size = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for name, entry in header.items():
            if name != "__metadata__" and isinstance(entry, dict):
                count = 1
                for dim in entry.get("shape", []):
                    count *= int(dim)
                total += count
    return total


def input_sizes(folder: Path) -> set[int]:
    """Input sizes of the Linear layers of a decoder (hidden, intermediate), from config.json."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return set()
    config = config.get("text_config", config)
    sizes = {int(config[k]) for k in ("hidden_size", "intermediate_size") if isinstance(config.get(k), int)}
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int):
        sizes.add(heads * head_dim)  # the attention output projection's input
    return sizes


def plan_export(precision: str, options: dict[str, str], source_dir: Path) -> ExportPlan:
    if precision not in ("fp16", "int8", "int4"):
        raise InvalidConfigError(f"no export recipe for {precision}")
    int4_keys = [k for k in INT4_OPTIONS if k in options]
    if precision != "int4" and int4_keys:
        raise InvalidConfigError(f"option(s) {', '.join(int4_keys)} apply to int4 only")
    if precision == "fp16":
        if "sym" in options:
            raise InvalidConfigError("option sym applies to int8 / int4 only")
        return ExportPlan("fp16", sym=False)
    sym = option_bool("sym", options["sym"]) if "sym" in options else True
    plan = ExportPlan(precision, sym=sym, parameters=count_parameters(source_dir))
    if not sym:
        plan.notes.append("asymmetric weights: OpenVINO's NPU plugin wants symmetric int4/int8; this may not run on a real NPU")
    if precision == "int8":
        return plan
    plan.ratio = float(options.get("ratio", 1.0))
    if not 0 < plan.ratio <= 1:
        raise InvalidConfigError(f"option ratio must be in (0, 1], got {plan.ratio}")
    if "group_size" in options:
        plan.group_size = option_int("group_size", options["group_size"])
        if plan.group_size != -1 and (plan.group_size < 1 or plan.group_size % NPU_GROUP_MULTIPLE):
            raise InvalidConfigError(
                f"option group_size must be -1 (channel-wise) or a multiple of {NPU_GROUP_MULTIPLE} "
                f"(the NPU's weight decompression needs it), got {options['group_size']!r}"
            )
    else:
        big = plan.parameters is not None and plan.parameters > CHANNEL_WISE_ABOVE
        plan.group_size = -1 if big else 128
    fallback = options.get("group_size_fallback", "adjust").strip().lower()
    if fallback not in FALLBACKS:
        raise InvalidConfigError(f"option group_size_fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    if plan.group_size > 0:
        sizes = input_sizes(source_dir)
        misfits = sorted(size for size in sizes if size % plan.group_size)
        if misfits and fallback == "error":
            raise InvalidConfigError(
                f"int4 group size {plan.group_size} does not divide the layer input size(s) {misfits}; "
                "try -o group_size_fallback=adjust or channelwise"
            )
        if misfits:
            # one group size for the whole model, the largest multiple of 64 below the asked one
            # that divides every layer's input size; else channel-wise
            fits = [g for g in range(plan.group_size - NPU_GROUP_MULTIPLE, 0, -NPU_GROUP_MULTIPLE)
                    if all(size % g == 0 for size in sizes)] if fallback == "adjust" else []
            chosen = fits[0] if fits else -1
            what = f"group size {chosen}" if chosen > 0 else "channel-wise int4"
            plan.notes.append(f"group size {plan.group_size} does not divide the layer input size(s) {misfits}: "
                              f"the whole model uses {what}")
            plan.group_size = chosen
    data_aware_options(plan, options)
    return plan


# ------------------------------------------------------------------ load (openvino engine)


def pipeline_config(options: dict[str, str], cache_dir: Path) -> dict[str, Any]:
    """LLMPipeline properties for ``NPU``: the documented NPU options checked, other UPPERCASE
    keys passed through, ``CACHE_DIR`` in aipc's cache unless given."""
    config: dict[str, Any] = {
        "MAX_PROMPT_LEN": option_int("MAX_PROMPT_LEN", options.get("MAX_PROMPT_LEN", DEFAULT_MAX_PROMPT_LEN), 1),
        "MIN_RESPONSE_LEN": option_int("MIN_RESPONSE_LEN", options.get("MIN_RESPONSE_LEN", DEFAULT_MIN_RESPONSE_LEN), 1),
    }
    for key, allowed in HINTS.items():
        if key in options:
            value = options[key].strip().upper()
            if value not in allowed:
                raise InvalidConfigError(f"option {key} must be one of {', '.join(allowed)}, got {options[key]!r}")
            config[key] = value
    cache = options.get("CACHE_DIR")
    config["CACHE_DIR"] = str(cache_dir) if cache is None else cache  # CACHE_DIR= (empty) turns caching off
    for key, value in options.items():
        if key.isupper() and key not in config and key not in HINTS:
            config[key] = value
    return config


def without_chunked_prefill(config: dict[str, Any], longrope: int | None) -> None:
    """A LongRoPE model (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) is prefilled in one piece
    (``PREFILL_HINT=STATIC``): NPUW's chunked prefill rotates the first chunk with the short factors
    while the prompt is past the original context (measured on the tiny stand-in, NPU-EMU, a
    215-token prompt in chunks of 64: 0 of 16 greedy tokens right; 14-16 of 16 in one piece)."""
    if not longrope:
        return
    if config.get("PREFILL_HINT") == "DYNAMIC" or "NPUW_LLM_PREFILL_CHUNK_SIZE" in config:
        raise InvalidConfigError("chunked prefill (PREFILL_HINT=DYNAMIC, NPUW_LLM_PREFILL_CHUNK_SIZE) gets a LongRoPE "
                                 "model's prompts past its original context wrong (the first chunk is rotated "
                                 "with the short factors); leave PREFILL_HINT unset or STATIC")
    config["PREFILL_HINT"] = "STATIC"


def threads(options: dict[str, str]) -> int | None:
    from aipc.options import thread_count

    return thread_count(options)
