"""Quantize: a Hugging Face folder -> an OpenVINO IR folder that LLMPipeline runs.

Imported only by ``aipc_quantize`` (optimum-intel alone costs 13-17 s and ~460 MB to import). The
export itself (optimum-intel's ``main_export`` / NNCF weight compression / openvino-tokenizers, the
machinery behind ``optimum-cli export openvino --task text-generation-with-past``) is shared with
the npu backend in :mod:`aipc_openvino_common.export`; what is this backend's is the weight
compression recipe, from :class:`aipc_openvino.options.QuantizePlan`.
"""

from __future__ import annotations

from pathlib import Path

from aipc_openvino_common import export as common

from .options import QuantizePlan


runtime_versions = common.runtime_versions


def export(source_dir: Path, output_dir: Path, plan: QuantizePlan, trust_remote_code: bool, progress,
           calibration=None) -> dict:
    """Write the IR, the converted tokenizer and the source's tokenizer/template files into
    ``output_dir``; return figures for the manifest. ``calibration``: the resolved ``-o dataset``."""
    def weight_config():
        return common.weight_config(plan.weight_format, bool(plan.sym), calibration, Path(source_dir),
                                    **plan.int4_config())

    return common.export(source_dir, output_dir, plan.weight_format, weight_config,
                         trust_remote_code=trust_remote_code, progress=progress,
                         group_size_hint="; try -o group_size=64 or -o group_size_fallback=adjust")
