"""Quantize: option checking (before any slow work), the recipe per precision and device, the
artifact's files and manifest, and refusals with aipc's error types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import aipc
from aipc.errors import (
    BackendUnavailableError,
    InvalidConfigError,
    UnsupportedDeviceError,
    UnsupportedPrecisionError,
)
from aipc.plugins import registry
from aipc.runtime import LoadRequest, QuantizeRequest
from aipc.types import Manifest
from aipc_openvino.options import plan_quantization, runtime_config
from aipc_openvino.runtime import detect


@pytest.fixture
def smollm2_like(tmp_path) -> Path:
    """A folder with SmolLM2's config.json (hidden 576 = 64 x 9, intermediate 1536)."""
    config = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
              "head_dim": 64, "num_hidden_layers": 30}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


# ---------------------------------------------------------------- the recipe (no export needed)


@pytest.fixture
def phi3_mini_like(tmp_path) -> Path:
    """A folder with Phi-3-mini's config.json (hidden 3072, intermediate 8192)."""
    config = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_int4_default_recipe_is_the_walkthroughs(phi3_mini_like):
    plan = plan_quantization("int4", "CPU", {}, phi3_mini_like)
    assert (plan.sym, plan.group_size, plan.ratio) == (True, 128, 0.6)
    assert (plan.awq, plan.dataset) == (False, None)  # data-aware is opt-in (benchmarks/README.md)
    assert not plan.notes and not plan.adjusted_group_sizes


def test_small_models_get_group_64(tiny, smollm2_like):
    for folder in (tiny, smollm2_like):  # hidden 128 and 576
        plan = plan_quantization("int4", "CPU", {}, folder)
        assert (plan.sym, plan.group_size, plan.ratio) == (True, 64, 0.6)
        assert (plan.awq, plan.scale_estimation, plan.dataset) == (False, False, None)  # data-aware is opt-in
        assert not plan.adjusted_group_sizes and any("small model" in n for n in plan.notes)
    aware = plan_quantization("int4", "CPU", {"awq": "true", "scale_estimation": "true", "dataset": "self"}, tiny)
    assert (aware.awq, aware.scale_estimation, aware.dataset, aware.group_size) == (True, True, "self", 64)
    assert plan_quantization("int4", "CPU", {"dataset": "none"}, tiny).dataset is None
    # each can still be chosen: the other keeps its default
    assert (plan_quantization("int4", "CPU", {"ratio": "0.8"}, tiny).group_size,
            plan_quantization("int4", "CPU", {"group_size": "32"}, tiny).ratio) == (64, 0.6)
    assert plan_quantization("int4", "NPU", {}, tiny).group_size == 128  # NPU keeps its documented settings


def test_int4_options_override(tiny):
    plan = plan_quantization("int4", "CPU", {"group_size": "64", "ratio": "1.0", "sym": "false"}, tiny)
    assert (plan.sym, plan.group_size, plan.ratio) == (False, 64, 1.0)


def test_npu_gets_npu_settings(tiny):
    plan = plan_quantization("int4", "NPU", {}, tiny)
    assert (plan.sym, plan.group_size, plan.ratio) == (True, 128, 1.0)
    assert plan_quantization("int8", "NPU", {}, tiny).sym is True
    assert plan_quantization("int8", "CPU", {}, tiny).sym is False  # int8_asym per-channel, as the CLI does


def test_group_size_not_dividing_hidden_size_is_adjusted_with_a_warning(smollm2_like):
    plan = plan_quantization("int4", "CPU", {"group_size": "128"}, smollm2_like)
    assert plan.group_size == 128 and plan.group_size_fallback == "adjust"
    assert plan.adjusted_group_sizes == {"576": 64}
    assert any("576" in note and "64" in note for note in plan.notes)
    assert plan.record()["adjusted_group_sizes"] == {"576": 64}


def test_group_size_fallback_error_refuses_at_once(smollm2_like):
    with pytest.raises(InvalidConfigError, match="group_size=64"):
        plan_quantization("int4", "CPU", {"group_size": "128", "group_size_fallback": "error"}, smollm2_like)
    with pytest.raises(InvalidConfigError, match="group_size=64"):
        plan_quantization("int4", "NPU", {"group_size_fallback": "error"}, smollm2_like)
    plan = plan_quantization("int4", "CPU", {"group_size": "64", "group_size_fallback": "error"}, smollm2_like)
    assert not plan.adjusted_group_sizes and not [note for note in plan.notes if note.startswith("warning")]


@pytest.mark.parametrize(("precision", "options", "message"), [
    ("int4", {"group_size": "abc"}, "whole number"),
    ("int4", {"ratio": "1.5"}, "ratio"),
    ("int4", {"sym": "maybe"}, "true or false"),
    ("int4", {"group_size_fallback": "ignore"}, "adjust or error"),
    ("int4", {"scale_estimation": "true"}, "dataset"),
    ("int4", {"gruop_size": "64"}, "unknown openvino option"),
    ("int8", {"group_size": "64"}, "per-channel"),
    ("fp16", {"ratio": "0.5"}, "int8/int4 only"),
])
def test_bad_options_are_refused(tiny, precision, options, message):
    with pytest.raises(InvalidConfigError, match=message):
        plan_quantization(precision, "CPU", options, tiny)


def test_runtime_config_defaults_and_pass_through(tmp_path, monkeypatch):
    monkeypatch.delenv("AIPC_NUM_THREADS", raising=False)
    config = runtime_config({"threads": "1", "KV_CACHE_PRECISION": "u8"}, "CPU", tmp_path, "int4")
    assert config == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "ATTENTION_BACKEND": "SDPA",
                      "CACHE_DIR": str(tmp_path), "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32",
                      "KV_CACHE_PRECISION": "u8"}
    assert runtime_config({"ATTENTION_BACKEND": "PA"}, "CPU", tmp_path, "int4")["ATTENTION_BACKEND"] == "PA"
    assert "ATTENTION_BACKEND" not in runtime_config({}, "NPU", tmp_path, "int4")
    monkeypatch.setenv("AIPC_NUM_THREADS", "2")
    assert runtime_config({}, "CPU", tmp_path, "int4")["INFERENCE_NUM_THREADS"] == 2
    assert runtime_config({}, "CPU", tmp_path, "fp16")["INFERENCE_PRECISION_HINT"] == "f32"
    assert "INFERENCE_PRECISION_HINT" not in runtime_config({}, "GPU", tmp_path, "fp16")  # GPUs compute in f16
    assert runtime_config({"INFERENCE_PRECISION_HINT": "bf16"}, "CPU", tmp_path, "fp16")["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "CACHE_DIR" not in runtime_config({"cache": "off"}, "CPU", tmp_path, "int4")
    with pytest.raises(InvalidConfigError):
        runtime_config({"threads": "many"}, "CPU", tmp_path, "int4")


# ---------------------------------------------------------------- refusals through the hooks


def _quantize_request(tiny, tmp_path, precision="int4", device="CPU", options=None) -> QuantizeRequest:
    return QuantizeRequest(backend="openvino", source_dir=tiny, output_dir=tmp_path, precision=precision,
                           device=device, options=options or {}, source={"name": "tiny"}, cache_dir=tmp_path)


def test_unsupported_precision_and_device(tiny, tmp_path):
    with pytest.raises(UnsupportedPrecisionError):
        registry().call("openvino", "aipc_quantize", request=_quantize_request(tiny, tmp_path, "fp32", "NPU"))
    with pytest.raises(UnsupportedDeviceError):
        registry().call("openvino", "aipc_quantize", request=_quantize_request(tiny, tmp_path, "int4", "TPU"))
    with pytest.raises(UnsupportedDeviceError):
        aipc.quantize(str(tiny), backend="openvino", precision="int4", device="TPU")
    with pytest.raises(InvalidConfigError):
        registry().call("openvino", "aipc_quantize", request=_quantize_request(tiny, tmp_path, options={"ratio": "2"}))
    assert not any(tmp_path.iterdir()), "a refused quantize wrote files"


def test_absent_device_is_refused_with_openvinos_reason(artifacts):
    info = registry().get("openvino").info
    absent = [d.name for d in info.devices if not d.present]
    if not absent:
        pytest.skip("every device is present here")
    folder = artifacts("int4")
    with pytest.raises(BackendUnavailableError):  # the core checks presence
        aipc.load(str(folder), device=absent[0])
    request = LoadRequest(backend="openvino", artifact_dir=folder, manifest=Manifest.read(folder), device=absent[0],
                          options={}, cache_dir=folder.parent)
    with pytest.raises(BackendUnavailableError, match="OpenVINO cannot use"):  # the hook asks OpenVINO itself
        registry().call("openvino", "aipc_load", request=request)


# ---------------------------------------------------------------- real exports of the tiny Phi-3


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_artifact_files_and_manifest(artifacts, tiny, precision):
    folder = artifacts(precision)
    manifest = Manifest.read(folder)
    assert (manifest.backend, manifest.precision, manifest.device) == ("openvino", precision, "CPU")
    assert manifest.options["weight_format"] == precision
    assert manifest.versions["openvino"] and manifest.versions["optimum-intel"]
    for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
                 "config.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), f"{precision} artifact lacks {name}"
    if precision == "int4":  # the tiny Phi-3 (hidden 128) is a small model: group 64, ratio 0.6
        assert (manifest.options["sym"], manifest.options["group_size"], manifest.options["ratio"]) == (True, 64, 0.6)
    assert detect(folder) == precision, "the folder's own precision is not recognised from its files"


def test_artifact_sizes_shrink_with_precision(artifacts):
    sizes = {p: (artifacts(p) / "openvino_model.bin").stat().st_size for p in ("fp16", "int8", "int4")}
    assert sizes["fp16"] > sizes["int8"] > sizes["int4"], sizes


def test_detect_ignores_other_folders(tiny, tmp_path):
    assert detect(tiny) is None
    assert detect(tmp_path) is None
    (tmp_path / "openvino_model.xml").write_text("not an IR")
    (tmp_path / "openvino_model.bin").write_bytes(b"")
    assert detect(tmp_path) is None


# ---------------------------------------------------------------- data-aware int4: calibration text


def test_data_aware_options_are_checked_at_once(tiny):
    with pytest.raises(InvalidConfigError, match="gptq and lora_correction"):
        plan_quantization("int4", "CPU", {"gptq": "true", "lora_correction": "true", "dataset": "self"}, tiny)
    with pytest.raises(InvalidConfigError, match="need"):
        plan_quantization("int4", "CPU", {"gptq": "true", "dataset": "none"}, tiny)
    with pytest.raises(InvalidConfigError, match="int4 only"):
        plan_quantization("int8", "CPU", {"dataset": "self"}, tiny)


def test_calibration_file_quantizes_and_is_recorded(tiny, tmp_path):
    """``-o dataset=FILE``: AWQ + scale estimation + GPTQ on the file's samples, which the
    manifest records (name, count, digest), so an artifact says what it was calibrated on."""
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(f"Sample {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(5)),
                     encoding="utf-8")
    folder = aipc.quantize(str(tiny), backend="openvino", precision="int4", device="CPU",
                           options={"awq": "true", "scale_estimation": "true", "gptq": "true", "dataset": str(calib)})
    options = Manifest.read(folder).options
    assert (options["awq"], options["scale_estimation"], options["gptq"]) == (True, True, True)
    assert options["calibration"]["dataset"] == "calib.txt" and options["calibration"]["samples"] == 5
    assert len(options["calibration"]["sha256"]) == 16
    model = aipc.load(str(folder), device="CPU")
    try:
        assert model.complete("Hello", max_new_tokens=4) is not None
    finally:
        model.close()


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_unreachable_hub_dataset_is_a_one_line_error(tiny, tmp_path, monkeypatch, env):
    from aipc.errors import HubUnavailableError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    request = _quantize_request(tiny, tmp_path / "out", options={"awq": "true", "dataset": "wikitext2"})
    with pytest.raises(HubUnavailableError) as raised:
        registry().call("openvino", "aipc_quantize", request=request)
    message = str(raised.value)
    assert "\n" not in message and "wikitext2" in message and "not reachable" in message and "dataset=self" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(InvalidConfigError, match="no file"):
        registry().call("openvino", "aipc_quantize",
                        request=_quantize_request(tiny, tmp_path / "out", options={"awq": "true", "dataset": "nosuch"}))
