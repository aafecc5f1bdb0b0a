"""Export a Hugging Face folder to an OpenVINO IR folder that OpenVINO GenAI's LLMPipeline runs.

Self-contained on purpose (imports only aipc, optimum-intel, nncf, openvino, openvino-tokenizers,
transformers): the OpenVINO plugin has the same machinery, and the two are meant to be folded
into one shared module later. What is NPU-specific arrives in the ``ExportPlan`` (symmetric
weights, int4 ratio 1.0, group 128 or channel-wise), not in this module.

- fp16: optimum's ``main_export`` with ``OVConfig(dtype="fp16")`` (``OVModelForCausalLM``'s
  ``export=True`` path saves uncompressed fp32);
- int8 / int4: ``OVModelForCausalLM.from_pretrained(export=True, quantization_config=
  OVWeightQuantizationConfig(...))`` (NNCF data-free weight compression), then ``save_pretrained``;
- the tokenizer: ``openvino_tokenizers.convert_tokenizer`` writes ``openvino_tokenizer.xml`` /
  ``openvino_detokenizer.xml`` (the Python export API does not), so LLMPipeline runs the folder
  without transformers.

Imported only inside ``aipc_quantize``: optimum-intel alone takes 10+ s to import.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from aipc.plugins import package_versions
from aipc.errors import BackendUnavailableError, InvalidConfigError, InvalidModelError

IR_FILES = ("openvino_model.xml", "openvino_model.bin")
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")
#: Files of the source folder the artifact keeps (the core renders the chat template from them).
KEEP = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
        "chat_template.json", "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt")
RUNTIMES = ("openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "optimum", "nncf", "transformers", "torch")


def runtime_versions(names=RUNTIMES) -> dict[str, str]:
    return package_versions(*names)


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith("Exception from ")]
    return ((meaningful or lines)[-1] if lines else type(error).__name__)[:300]


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


def weight_config(plan) -> Any:
    """optimum-intel's ``OVWeightQuantizationConfig`` for an int8 / int4 plan."""
    from optimum.intel import OVWeightQuantizationConfig

    if plan.weight_format == "int8":
        return OVWeightQuantizationConfig(bits=8, sym=bool(plan.sym))
    # the plan's group size divides every layer (options.plan_export), so NNCF needs no fallback
    return OVWeightQuantizationConfig(bits=4, sym=bool(plan.sym), group_size=plan.group_size, ratio=plan.ratio)


def export(source_dir: Path, output_dir: Path, plan, trust_remote_code: bool = False,
           progress: Callable[..., None] = lambda *a, **k: None) -> dict[str, Any]:
    """Write the IR, the OpenVINO tokenizer and the source's tokenizer/template files into
    ``output_dir``; return timings for the manifest."""
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
            f"the openvino engine exports with optimum-intel, which cannot be imported ({first_line(error)}): "
            "pip install 'aipc-npu[export]'; if torchvision is installed, remove it (pip uninstall -y torchvision)"
        ) from None
    _quiet()  # again: nncf and optimum configure their loggers on import
    nncf.set_log_level(logging.ERROR)
    progress(f"Exporting {source_dir.name} to OpenVINO IR ({plan.weight_format}, NPU recipe)", 0.05)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if plan.weight_format == "fp16":
                main_export(model_name_or_path=str(source_dir), output=output_dir, task="text-generation-with-past",
                            ov_config=OVConfig(dtype="fp16"), convert_tokenizer=False,
                            trust_remote_code=trust_remote_code, local_files_only=True)
            else:
                model = OVModelForCausalLM.from_pretrained(
                    str(source_dir), export=True, compile=False, quantization_config=weight_config(plan),
                    trust_remote_code=trust_remote_code, local_files_only=True,
                )
                progress("Saving the compressed model", 0.85)
                model.save_pretrained(output_dir)
                del model
    except nncf.InvalidGroupSizeError as error:
        raise InvalidConfigError(f"int4 group size {plan.group_size} does not fit this model ({first_line(error)})") from None
    except (OSError, ValueError, KeyError) as error:
        raise InvalidModelError(f"cannot export {source_dir}: {first_line(error)}") from None
    export_s = time.perf_counter() - started
    progress("Converting the tokenizer with openvino-tokenizers", 0.92)
    convert_tokenizer(source_dir, output_dir, trust_remote_code)
    for name in KEEP:
        if (source_dir / name).is_file() and not (output_dir / name).exists():
            shutil.copy2(source_dir / name, output_dir / name)
    for name in (*IR_FILES, *TOKENIZER_FILES):
        if not (output_dir / name).is_file():
            raise InvalidModelError(f"the export wrote no {name}")
    return {"export_s": round(export_s, 1), "total_s": round(time.perf_counter() - started, 1)}


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
