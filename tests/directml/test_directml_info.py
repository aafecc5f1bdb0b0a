"""What `aipc backends` says about directml, and that saying it stays cheap."""

from __future__ import annotations

import json
import sys

import pytest

from aipc.plugins import registry

from directml_support import BACKEND, run_aipc, run_python


def test_info_describes_devices_and_precisions():
    info = registry().get(BACKEND).info
    assert info.name == BACKEND and info.priority == 30 and info.default_precision == "int4"
    devices = {d.name: d for d in info.devices}
    assert devices["CPU"].precisions == ("fp32", "int8", "int4") and devices["CPU"].present
    assert devices["DML"].precisions == ("fp16", "int4") and devices["DML"].accelerator
    assert devices["AUTO"].precisions == ("fp16", "int4") and devices["AUTO"].present
    caps = info.capabilities
    assert not caps.native_stop_strings, "onnxruntime-genai has no stop strings: the core must apply them"
    assert caps.exact_precisions == ("fp32", "fp16")
    assert set(info.quantize_options) == {"block_size", "accuracy_level", "algo_config", "is_symmetric",
                                          "matmul_mixed_precision", "iters", "dataset", "num_samples"}
    assert "threads" in info.options and "threads" not in info.quantize_options
    assert info.runtime_versions.get("onnxruntime-genai") or info.runtime_versions.get("onnxruntime-genai-directml")


@pytest.mark.skipif(sys.platform == "win32", reason="DirectML may be present on Windows")
def test_dml_is_absent_with_the_reason_in_plain_words():
    dml = registry().get(BACKEND).info.device("DML")
    assert not dml.present
    assert "DirectML needs Windows" in dml.reason and "onnxruntime-genai" in dml.reason
    # the default device, without DirectML, is the CPU
    assert registry().get(BACKEND).info.default_device().name == "CPU"


def test_cli_backends_lists_directml_with_its_devices():
    done = run_aipc("backends", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    entry = next(b for b in data["backends"] if b["name"] == BACKEND)
    assert entry["ok"], entry["error"]
    devices = {d["name"]: d for d in entry["devices"]}
    assert set(devices) == {"DML", "CPU", "AUTO"}
    assert devices["CPU"]["present"]
    if sys.platform != "win32":
        assert not devices["DML"]["present"] and devices["DML"]["reason"]


def test_describing_the_backend_imports_no_runtime():
    code = (
        "import sys, aipc_directml.plugin as p\n"
        "info = p.aipc_backend_info()\n"
        "heavy = [m for m in ('onnxruntime_genai', 'onnxruntime', 'onnx', 'torch', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = run_python(code, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"describing the backend imported {done.stdout.strip()}"


def test_plugin_import_is_fast():
    done = run_python("import aipc_directml.plugin", env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")]
    total_us = next(int(r[1]) for r in rows if r[2].strip() == "aipc_directml.plugin")
    assert total_us < 500_000, f"importing the plugin took {total_us / 1000:.0f} ms"
