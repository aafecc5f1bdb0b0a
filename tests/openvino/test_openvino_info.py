"""The backend's description: cheap (no openvino import), and its device probes agree with
what OpenVINO itself says on this machine."""

from __future__ import annotations

import json

import pytest

from aipc.plugins import registry


def test_registered_and_well_formed():
    backend = registry().backends.get("openvino")
    assert backend is not None and backend.ok, backend.error if backend else "not registered"
    info = backend.info
    assert info.default_precision == "int4"
    assert [d.name for d in info.devices] == ["CPU", "GPU", "GPU.0", "NPU", "AUTO"]
    assert info.device("CPU").present
    for device in info.devices:
        assert device.present or device.reason, f"{device.name} absent without a reason"
    caps = info.capabilities
    assert caps.native_stop_strings and caps.streaming and caps.repetition_penalty
    assert "fp16" in caps.exact_precisions
    assert {"group_size", "ratio", "sym"} <= set(info.quantize_options)
    assert "threads" not in info.quantize_options  # runtime options must not split the artifact cache
    assert info.runtime_versions["openvino"] != "not installed"


def test_info_imports_no_runtime(python_run):
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import aipc_openvino.plugin as p\n"
        "info = p.aipc_backend_info()\n"
        "took = time.perf_counter() - t\n"
        "runtimes = ('openvino', 'openvino_genai', 'openvino_tokenizers', 'optimum', 'nncf', 'transformers', 'torch')\n"
        "heavy = [m for m in runtimes if m in sys.modules]\n"
        "print(heavy, took)\n"
    )
    done = python_run(code)
    assert done.returncode == 0, done.stderr
    heavy, took = done.stdout.rsplit("]", 1)
    assert heavy.strip() == "[", f"describing the backend imported {heavy}]"
    assert float(took) < 1.0, f"import + describe took {float(took):.2f} s"


def _openvino_can_open(device: str) -> tuple[bool, str]:
    """Ask OpenVINO for real: compile a one-op model on ``device``."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    param = ops.parameter([1, 4], np.float32)
    model = ov.Model([ops.relu(param)], [param])
    try:
        ov.Core().compile_model(model, device)
        return True, ""
    except RuntimeError as error:
        return False, str(error)


@pytest.mark.parametrize("device", ["CPU", "GPU", "NPU", "AUTO"])
def test_cheap_probe_agrees_with_openvino(device):
    info = registry().get("openvino").info
    can, message = _openvino_can_open(device)
    probed = info.device(device)
    assert probed.present == can, f"probe says {probed.present} ({probed.reason}), OpenVINO says {can}: {message[-300:]}"
    if not can:
        # the reason names the library OpenVINO failed to load
        if "libOpenCL" in message:
            assert "libOpenCL" in probed.reason
        if "npu_compiler_loader" in message:
            assert "npu_compiler_loader" in probed.reason


def test_backends_command_shows_absent_devices(cli_run):
    done = cli_run("backends", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)["backends"]}
    devices = {d["name"]: d for d in rows["openvino"]["devices"]}
    assert devices["CPU"]["present"]
    for name in ("GPU", "GPU.0", "NPU"):
        assert devices[name]["present"] or devices[name]["reason"]
    text = cli_run("backends")
    assert "openvino" in text.stdout and "absent" in text.stdout


def test_devices_command_asks_openvino(cli_run):
    done = cli_run("openvino", "devices")
    assert done.returncode == 0, done.stderr
    assert "CPU: present" in done.stdout
