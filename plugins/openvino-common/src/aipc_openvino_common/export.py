"""Export a Hugging Face folder to an OpenVINO IR folder that OpenVINO GenAI's LLMPipeline runs,
for the ``openvino`` and ``npu`` backends. What is backend-specific (the NPU's recipe, the
OpenVINO backend's NNCF options) arrives as the weight-compression config.

- fp32 / fp16: optimum's ``main_export`` with ``OVConfig(dtype=...)`` (``OVModelForCausalLM``'s
  ``export=True`` path saves uncompressed fp32);
- int8 / int4: ``OVModelForCausalLM.from_pretrained(export=True, quantization_config=
  OVWeightQuantizationConfig(...))`` (NNCF weight compression), then ``save_pretrained``;
- the tokenizer: ``openvino_tokenizers.convert_tokenizer`` writes ``openvino_tokenizer.xml`` /
  ``openvino_detokenizer.xml`` (the Python export API does not), so LLMPipeline runs the folder
  without transformers.

Imported only when quantizing: optimum-intel alone takes 10+ s and ~460 MB to import.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aipc.artifacts import copy_side_files, read_config
from aipc.errors import (BackendUnavailableError, HubUnavailableError, InvalidConfigError, InvalidModelError,
                         UnsupportedArchitectureError)
from aipc.plugins import package_versions
from aipc.types import option_bool, option_int

from .genai import first_line

IR_FILES = ("openvino_model.xml", "openvino_model.bin")
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")
RUNTIMES = ("openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "optimum", "nncf", "transformers", "torch")


def runtime_versions(names=RUNTIMES) -> dict[str, str]:
    return package_versions(*names)


#: The hub datasets optimum-intel's causal-LM calibration loads by name (anything else it refuses
#: after the export, minutes in).
HUB_DATASETS = ("wikitext2", "c4", "c4-new", "gsm8k")
#: Data-aware int4 options: each needs calibration text (``-o dataset=``); AWQ runs data-free without.
DATA_AWARE = ("scale_estimation", "gptq", "lora_correction")
ALGORITHMS = ("awq", *DATA_AWARE)


@dataclass(kw_only=True)
class DataAware:
    """The data-aware int4 settings of both backends' plans (:func:`data_aware_options` fills them)."""

    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    lora_correction: bool = False
    dataset: str | None = None
    num_samples: int | None = None


def data_aware_options(plan, given: dict[str, str]) -> None:
    """awq, scale_estimation, gptq, lora_correction, dataset and num_samples onto ``plan`` (the
    openvino and npu backends' int4 plans): given values win over the plan's defaults;
    ``dataset=none`` is data-free; the algorithms that need data say so at once."""
    for key in ALGORITHMS:
        if key in given:
            setattr(plan, key, option_bool(key, given[key]))
    if "dataset" in given:
        value = given["dataset"].strip()
        plan.dataset = None if value.lower() in ("", "none") else value
    if "num_samples" in given:
        plan.num_samples = option_int("num_samples", given["num_samples"])
        if plan.num_samples < 1:
            raise InvalidConfigError("num_samples must be >= 1")
    needing = [key for key in DATA_AWARE if getattr(plan, key)]
    if needing and not plan.dataset:
        raise InvalidConfigError(f"{' and '.join(needing)} need(s) calibration data: add -o dataset=self (the model's "
                                 "own text), a text file, or a hub name")
    if plan.gptq and plan.lora_correction:
        raise InvalidConfigError("gptq and lora_correction cannot be combined (NNCF applies one or the other)")
    if plan.num_samples and not plan.dataset:
        raise InvalidConfigError("num_samples needs -o dataset=...")


def calibration(spec: str, source_dir: Path, samples: int | None, trust_remote_code: bool, progress):
    """``-o dataset=SPEC`` resolved (aipc.calibration: self, a file, or a hub name) before the export,
    so a hub dataset that cannot be had fails at once in one line, not inside NNCF minutes later."""
    from aipc import calibration as calib

    resolved = calib.resolve(spec, source_dir, samples, trust_remote_code=trust_remote_code, progress=progress)
    if resolved.texts is None:
        if resolved.name not in HUB_DATASETS:
            raise InvalidConfigError(f"dataset {resolved.name!r} is no file, and not a dataset optimum-intel loads by "
                                     f"name ({', '.join(HUB_DATASETS)}); use -o dataset=self or a text file")
        reason = _hub_unreachable()
        if reason:
            raise HubUnavailableError(f"dataset {resolved.name} needs the Hugging Face hub, which is not reachable: "
                                      f"{reason}; use -o dataset=self or a file")
    return resolved


def _hub_unreachable() -> str | None:
    """Why the hub (``HF_ENDPOINT``) cannot be reached, or None; a 5 s probe."""
    import urllib.error
    import urllib.request

    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(f"{endpoint}/api/datasets?limit=1", timeout=5).close()
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"{endpoint}: {first_line(getattr(error, 'reason', None) or error)}"
    return None


def weight_config(weight_format: str, sym: bool, calibration=None, source_dir: Path | None = None, **int4: Any):
    """optimum-intel's ``OVWeightQuantizationConfig`` for int8 (per-channel) or int4 (``int4``:
    group_size, ratio, awq, scale_estimation, gptq, lora_correction, ...; None / False left out),
    with the resolved calibration text (a list of strings, or a hub name) and the source tokenizer."""
    from optimum.intel import OVWeightQuantizationConfig

    if weight_format == "int8":
        return OVWeightQuantizationConfig(bits=8, sym=sym)
    kwargs: dict[str, Any] = {k: v for k, v in int4.items() if v not in (None, False)}
    if kwargs.pop("awq", False):
        kwargs["quant_method"] = "awq"
    if calibration is not None:
        kwargs["dataset"] = calibration.texts if calibration.texts is not None else calibration.name
        kwargs["tokenizer"] = str(source_dir)
        if calibration.texts is not None:
            kwargs["num_samples"] = len(calibration.texts)
    return OVWeightQuantizationConfig(bits=4, sym=sym, **kwargs)


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("nncf", "optimum", "optimum.intel", "transformers", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def export(source_dir: Path, output_dir: Path, weight_format: str, weight_config: Callable[[], Any] | None = None, *,
           trust_remote_code: bool = False, progress: Callable[..., None] = lambda *a, **k: None, recipe: str = "",
           import_hint: str = "", group_size_hint: str = "") -> dict[str, Any]:
    """Write the IR, the OpenVINO tokenizer and the source's tokenizer/template files into
    ``output_dir``; return timings for the manifest.

    ``weight_format`` is fp32, fp16, int8 or int4; for int8 / int4 ``weight_config()`` returns
    optimum-intel's ``OVWeightQuantizationConfig`` (called once optimum-intel is imported).
    ``recipe`` names the settings in the progress line; ``import_hint`` and ``group_size_hint``
    end the errors for a missing optimum-intel and a group size NNCF refuses.
    """
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    started = time.perf_counter()
    _quiet()
    progress("Loading optimum-intel and NNCF", 0.02)
    try:
        import nncf
        from optimum.exporters.openvino import main_export
        from optimum.intel import OVConfig, OVModelForCausalLM
    except ImportError as error:  # e.g. PyPI's CUDA torchvision beside the CPU torch
        raise BackendUnavailableError(
            f"optimum-intel cannot be imported ({first_line(error)}){import_hint}; if torchvision is installed, "
            "remove it: pip uninstall -y torchvision"
        ) from None
    _quiet()  # again: nncf and optimum configure their loggers on import
    nncf.set_log_level(logging.ERROR)
    progress(f"Exporting {source_dir.name} to OpenVINO IR ({weight_format}{', ' + recipe if recipe else ''})", 0.05)
    try:
        with warnings.catch_warnings():  # torch's TracerWarnings etc.: noise for the user
            warnings.simplefilter("ignore")
            if weight_format in ("fp32", "fp16"):
                main_export(model_name_or_path=str(source_dir), output=output_dir, task="text-generation-with-past",
                            ov_config=OVConfig(dtype=weight_format), convert_tokenizer=False,
                            trust_remote_code=trust_remote_code, local_files_only=True)
            else:
                model = OVModelForCausalLM.from_pretrained(
                    str(source_dir), export=True, compile=False, quantization_config=weight_config(),
                    trust_remote_code=trust_remote_code, local_files_only=True,
                )
                progress("Saving the compressed model", 0.85)
                model.save_pretrained(output_dir)
                del model
                _keep_source_context(source_dir, output_dir)
    except nncf.InvalidGroupSizeError as error:
        raise InvalidConfigError(f"the int4 group size does not fit this model ({first_line(error)}){group_size_hint}") from None
    except (OSError, ValueError, KeyError) as error:
        reason = first_line(error)
        if "unsupported architecture" in reason or "is not supported yet" in reason:  # optimum's wording
            raise UnsupportedArchitectureError(f"optimum-intel cannot export {source_dir}: {reason}") from None
        raise InvalidModelError(f"cannot export {source_dir}: {reason}") from None
    export_s = time.perf_counter() - started
    progress("Converting the tokenizer with openvino-tokenizers", 0.92)
    convert_tokenizer(source_dir, output_dir, trust_remote_code)
    copy_side_files(source_dir, output_dir)  # tokenizer and chat template files the core reads
    for name in (*IR_FILES, *TOKENIZER_FILES):
        if not (output_dir / name).is_file():
            raise InvalidModelError(f"the export wrote no {name}")
    return {"export_s": round(export_s, 1), "total_s": round(time.perf_counter() - started, 1)}


def _keep_source_context(source_dir: Path, output_dir: Path) -> None:
    """OVModelForCausalLM sets a LongRoPE Phi-3's ``max_position_embeddings`` to its original context
    (for its own generate loop) and saves that; the IR it exported carries both factor sets (its
    rotary picks the long ones past the original context), so the artifact keeps the source's."""
    source, saved = read_config(source_dir), read_config(output_dir)
    if saved and source.get("max_position_embeddings", 0) > saved.get("max_position_embeddings", 0):
        saved["max_position_embeddings"] = source["max_position_embeddings"]
        (output_dir / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")


def convert_tokenizer(source_dir: Path, output_dir: Path, trust_remote_code: bool = False) -> None:
    """Save the Hugging Face tokenizer and its OpenVINO tokenizer / detokenizer models."""
    import openvino
    from openvino_tokenizers import convert_tokenizer as ov_convert
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise InvalidModelError(f"cannot load the tokenizer of {source_dir}: {first_line(error)}") from None
    tokenizer.save_pretrained(str(output_dir))
    ov_tokenizer, ov_detokenizer = ov_convert(tokenizer, with_detokenizer=True)
    openvino.save_model(ov_tokenizer, str(Path(output_dir) / TOKENIZER_FILES[0]))
    openvino.save_model(ov_detokenizer, str(Path(output_dir) / TOKENIZER_FILES[1]))


#: The first optimum-intel release whose export was checked here to carry a LongRoPE model's long
#: factors (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini): on the tiny stand-ins, prompts past the
#: original context give the reference's greedy tokens (benchmarks/longrope.py).
LONGROPE_EXPORT_CHECKED = (2, 2, 0)


def context_of(folder: Path, versions: dict[str, str]) -> int | None:
    """The context an exported artifact accepts: the model's full one, or for a LongRoPE model
    exported by an optimum-intel older than :data:`LONGROPE_EXPORT_CHECKED` (its manifest's
    ``versions`` say which) only the original context, which is all that export was known to get
    right."""
    from aipc.artifacts import context_length

    try:
        exporter = tuple(int(p) for p in versions.get("optimum-intel", "0").split(".")[:3])
    except ValueError:
        exporter = (0,)
    return context_length(folder, phi3_original=exporter < LONGROPE_EXPORT_CHECKED)
