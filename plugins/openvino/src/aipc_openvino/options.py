"""The ``-o KEY=VALUE`` options of the OpenVINO backend: what they mean and how they are checked.

Lowercase keys are aipc's own and must be known (a typo is an error, not silently ignored).
UPPERCASE keys are OpenVINO properties (``-o KV_CACHE_PRECISION=u8``) passed through to the
runtime unchanged. No heavy import here: the plugin module imports this to describe itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aipc.errors import InvalidConfigError, InvalidModelError
from aipc.types import option_bool, option_int
from aipc_openvino_common.export import ALGORITHMS, DataAware, data_aware_options

#: Options that change the artifact (the core's cache key includes them).
QUANTIZE_OPTIONS = {
    "group_size": "int4 group size (default 128, 64 for models with hidden size < 1024; -1 = per-channel)",
    "ratio": "int4: share of weights in int4, the rest int8 (default 0.6; 1.0 on NPU)",
    "sym": "symmetric quantization (int4 default true, int8 default false; true on NPU)",
    "group_size_fallback": "adjust (default: smaller group where the size does not divide a layer, with a warning) or error",
    "awq": "int4: activation-aware weight quantization (data-aware with a dataset, else data-free; default false)",
    "scale_estimation": "int4: scale estimation (needs dataset; default false)",
    "gptq": "int4: GPTQ (needs dataset; default false)",
    "lora_correction": "int4: LoRA correction adapters (needs dataset; slow; default false)",
    "dataset": "int4: calibration text for AWQ / scale estimation / GPTQ / mixed precision by activations: self (the "
               "source model's own answers, generated once and cached), a text file (blank-line separated) or "
               ".jsonl, a hub name (wikitext2, c4; needs the hub), or none (data-free)",
    "num_samples": "int4: calibration samples (default 32 for self; all of a file)",
    "all_layers": "int4: embeddings and the output layer in int4 too (default false)",
}

#: Options read when loading (not part of the cache key).
RUNTIME_OPTIONS = {
    "threads": "INFERENCE_NUM_THREADS (default: OpenVINO's; env AIPC_NUM_THREADS)",
    "cache": "on (default: compiled model cached under aipc's cache, second load skips compilation) or off",
}

HELP = {
    **QUANTIZE_OPTIONS,
    **RUNTIME_OPTIONS,
    "KEY": "any UPPERCASE OpenVINO property, passed to the runtime (e.g. KV_CACHE_PRECISION=u8)",
}

#: Below this hidden size a model counts as small: its int4 default is group 64 (measured on
#: SmolLM2-135M, see plan_quantization), not the walkthrough's group 128; the ratio is the
#: walkthrough's 0.6 for every size.
SMALL_MODEL_HIDDEN = 1024
SMALL_MODEL_GROUP = 64

INT4_ONLY = ("group_size", "ratio", "group_size_fallback", "awq", "scale_estimation", "gptq", "lora_correction",
             "dataset", "num_samples", "all_layers")


def check_names(options: dict[str, str]) -> None:
    """Every lowercase key must be an option of this backend; UPPERCASE keys pass through."""
    unknown = sorted(k for k in options if not k.isupper() and k not in QUANTIZE_OPTIONS and k not in RUNTIME_OPTIONS)
    if unknown:
        known = ", ".join([*QUANTIZE_OPTIONS, *RUNTIME_OPTIONS])
        raise InvalidConfigError(
            f"unknown openvino option(s) {', '.join(unknown)} (known: {known}; UPPERCASE keys are OpenVINO properties)"
        )


@dataclass
class QuantizePlan(DataAware):
    """The weight-compression recipe actually used; it is what the manifest records."""

    weight_format: str  # fp32, fp16, int8, int4
    sym: bool | None = None
    group_size: int | None = None
    ratio: float | None = None
    group_size_fallback: str | None = None
    all_layers: bool | None = None
    notes: list[str] = field(default_factory=list)  # warnings given while planning
    adjusted_group_sizes: dict[str, int] = field(default_factory=dict)  # layer input size -> group size

    def record(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v not in (None, [], {}) and k != "notes"}
        if self.weight_format != "int4":
            for key in ALGORITHMS:
                data.pop(key, None)
        return data

    def int4_config(self) -> dict[str, Any]:
        """The NNCF settings besides bits, sym and the calibration text (export.weight_config)."""
        fallback = self.group_size_fallback if self.adjusted_group_sizes or self.group_size_fallback == "adjust" else None
        return dict(group_size=self.group_size, ratio=self.ratio, group_size_fallback=fallback, awq=self.awq,
                    scale_estimation=self.scale_estimation, gptq=self.gptq, lora_correction=self.lora_correction,
                    num_samples=self.num_samples, all_layers=self.all_layers)


def _matmul_input_sizes(source_dir: Path) -> dict[str, int]:
    """The reduction (input) sizes of a decoder's linear layers, from its config.json."""
    try:
        config = json.loads((Path(source_dir) / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise InvalidModelError(f"{source_dir} has no readable config.json: {error}") from None
    config = config.get("text_config", config)  # multimodal wrappers keep the LM config inside
    sizes = {}
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    if hidden:
        sizes["hidden_size"] = int(hidden)
    inter = config.get("intermediate_size") or config.get("n_inner") or config.get("ffn_dim")
    if inter:
        sizes["intermediate_size"] = int(inter)
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if heads and head_dim and heads * head_dim != hidden:
        sizes["attention output"] = int(heads) * int(head_dim)
    return sizes


def plan_quantization(precision: str, device: str, options: dict[str, str], source_dir: Path) -> QuantizePlan:
    """Check the options for this precision/device and decide the recipe, before any heavy work.

    int4 defaults to the walkthrough's recipe (sym, group 128, ratio 0.6), except that models
    with a hidden size below 1024 (sub-billion ones like SmolLM2) get group 64. On NPU the
    settings OpenVINO documents for NPU are chosen (sym, group 128, ratio 1.0); explicit
    options win.

    A group size that does not divide a layer's input size (SmolLM2: hidden 576 = 64 x 9) is
    adjusted per layer by default, the way NNCF's ``group_size_fallback="adjust"`` does it (the
    largest power of two dividing the size, down to 32), with a warning; ``-o
    group_size_fallback=error`` turns that into an error here, at once, instead of NNCF's
    ``InvalidGroupSizeError`` after minutes of export.
    """
    check_names(options)
    given = {k: v for k, v in options.items() if k in QUANTIZE_OPTIONS}
    npu = device.upper().startswith("NPU")
    if precision in ("fp32", "fp16"):
        if given:
            raise InvalidConfigError(
                f"option(s) {', '.join(sorted(given))} apply to int8/int4 only, not {precision}"
            )
        return QuantizePlan(weight_format=precision)
    if precision == "int8":
        wrong = sorted(k for k in given if k in INT4_ONLY)
        if wrong:
            raise InvalidConfigError(f"int8 is per-channel: option(s) {', '.join(wrong)} apply to int4 only")
        sym = option_bool("sym", given["sym"]) if "sym" in given else npu
        return QuantizePlan(weight_format="int8", sym=sym, group_size=-1, ratio=1.0)
    if precision != "int4":
        raise InvalidConfigError(f"unknown precision {precision!r}")

    sizes = _matmul_input_sizes(source_dir)
    plan = QuantizePlan(weight_format="int4", sym=True, group_size=128, ratio=1.0 if npu else 0.6)
    hidden = sizes.get("hidden_size", 0)
    if not npu and 0 < hidden < SMALL_MODEL_HIDDEN:
        # Sub-billion models: SmolLM2-135M's answers leave the reference's at group 128 (which
        # does not divide its hidden 576), so group 64. The ratio: 0.6 (aipc-openvino 0.3; 0.8
        # before). benchmarks/sweep.py on SmolLM2-135M, Intel Xeon, 1 thread, group 64, data-free,
        # kept of the reference's right answers on the tuning set / the 150-question eval set
        # (benchmarks/results/sweep-openvino-int4-ratio-eval150.json; A/B decode speed in
        # bench-openvino-int4-ratio-ab-{1,2,3}.json):
        #   ratio 0.8 (the default before):  15/19, 73/94 (78%), 104 MB
        #   ratio 0.6:                       18/19, 82/94 (87%), 114 MB, decode 0.94-1.00x (0.96x pooled)
        #   ratio 0.4:                       14/19, 80/94, 124 MB;  ratio 0.2: 17/19, 76/94, 134 MB
        # The tuning set chooses 0.6 and the eval set agrees (12 answers kept that 0.8 loses against
        # 3 the other way; McNemar p = 0.035). Data-aware recipes stay opt-in: on the same sets
        # scale estimation keeps 16/19, 71/94 and GPTQ 15/19, 78/94 (333 s to quantize) at ratio 0.8;
        # over ratio 0.6 neither they, AWQ, group 32 nor sym=false keeps more on the 30-question
        # tuning set or on eval (results/sweep-openvino-int4-over-ratio06-eval150.json). On the
        # 160-question tuning set (results/tuning160-openvino-int4.json): 0.6 keeps 76/104, 0.8 74,
        # sym=false 82 (which the eval set does not confirm: 78/94).
        if "group_size" not in given:
            plan.group_size = SMALL_MODEL_GROUP
            plan.notes.append(f"hidden size {hidden} < {SMALL_MODEL_HIDDEN}: small model, int4 group size "
                              f"{SMALL_MODEL_GROUP} (-o group_size=128 for the walkthrough's)")
    if "sym" in given:
        plan.sym = option_bool("sym", given["sym"])
    if "group_size" in given:
        plan.group_size = option_int("group_size", given["group_size"])
        if plan.group_size != -1 and plan.group_size < 1:
            raise InvalidConfigError(f"group_size must be a positive whole number or -1, got {given['group_size']!r}")
    if "ratio" in given:
        try:
            plan.ratio = float(given["ratio"])
        except ValueError:
            raise InvalidConfigError(f"option ratio must be a number in (0, 1], got {given['ratio']!r}") from None
        if not 0 < plan.ratio <= 1:
            raise InvalidConfigError(f"option ratio must be in (0, 1], got {given['ratio']!r}")
    fallback = given.get("group_size_fallback", "adjust").strip().lower()
    if fallback not in ("adjust", "error"):
        raise InvalidConfigError(f"group_size_fallback must be adjust or error, got {given['group_size_fallback']!r}")
    plan.group_size_fallback = fallback
    data_aware_options(plan, given)
    if "all_layers" in given:
        plan.all_layers = option_bool("all_layers", given["all_layers"])

    if plan.group_size and plan.group_size > 0:
        for what, size in sizes.items():
            if size % plan.group_size == 0:
                continue
            adjusted = size & -size  # the largest power of two dividing size, as NNCF adjusts it
            if fallback == "error":
                hint = f"-o group_size={adjusted}" if adjusted >= 32 else "-o group_size=-1 (per-channel)"
                raise InvalidConfigError(
                    f"int4 group size {plan.group_size} does not divide the model's {what} ({size}); "
                    f"use {hint}, or -o group_size_fallback=adjust"
                )
            if adjusted >= 32:
                note = (f"warning: group size {plan.group_size} does not divide the model's {what} ({size}): "
                        f"those layers use group size {adjusted}")
            else:
                adjusted = 0
                note = (f"warning: group size {plan.group_size} does not divide the model's {what} ({size}) and no group "
                        f">= 32 does: those layers fall back to int8")
            plan.adjusted_group_sizes[str(size)] = adjusted
            plan.notes.append(note)
    return plan


def runtime_config(options: dict[str, str], device: str, cache_dir: Path | None, precision: str = "") -> dict[str, Any]:
    """The properties LLMPipeline gets: the walkthrough's defaults, then the user's overrides."""
    from aipc.options import thread_count

    check_names(options)
    config: dict[str, Any] = {}
    dev = device.upper()
    if not dev.startswith("NPU"):
        config.update(PERFORMANCE_HINT="LATENCY", NUM_STREAMS="1")
        # LLMPipeline's default on x86/ARM is the paged-attention (continuous batching) backend,
        # whose compiled model the CACHE_DIR cache does not spare: SmolLM2 int4 loaded in 2.8 s
        # with or without the cache, against 1.07 s for the stateful SDPA model with it (2.96 s
        # without). PA decodes faster (70 vs 57 tok/s, 1 thread): -o ATTENTION_BACKEND=PA for
        # long generations in one process; SDPA for the one-shot `aipc run` that loads every time.
        config["ATTENTION_BACKEND"] = "SDPA"
    cache = options.get("cache", "on").strip().lower()
    if cache not in ("on", "off"):
        raise InvalidConfigError(f"option cache must be on or off, got {options['cache']!r}")
    if cache == "on" and cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    threads = thread_count(options)
    if threads and dev in ("CPU", "AUTO"):
        config["INFERENCE_NUM_THREADS"] = threads
    if dev in ("CPU", "AUTO"):
        # OpenVINO's CPU plugin computes in bf16 where the CPU has it (AVX512-BF16, AMX: servers
        # like this one) and in f32 elsewhere (the Core Ultra CPUs of AI PCs lack both). bf16
        # costs accuracy for no speed on these models: SmolLM2 fp32 greedy tokens left the
        # reference's after 0-5 steps; int8 (SDPA) picked the reference's first answer token on
        # 5 of 8 prompts in bf16 and 7 of 8 in f32, at the same decode speed (1 thread). So every
        # precision computes in f32, as on an AI PC; -o INFERENCE_PRECISION_HINT=bf16 to try it.
        config["INFERENCE_PRECISION_HINT"] = "f32"
    config.update({k: v for k, v in options.items() if k.isupper()})
    return config
