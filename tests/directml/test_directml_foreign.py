"""Model folders made outside aipc (the model builder's own command line, downloaded layouts) and
the DirectML device: detection, `aipc run` on them, and the AUTO fallback."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

import aipc
from aipc.errors import BackendUnavailableError, UnsupportedPrecisionError
from aipc.plugins import registry

from directml_support import BACKEND, last_json, run_aipc

no_dml = pytest.mark.skipif(sys.platform == "win32", reason="DirectML may be present on Windows")


def test_builder_cli_folder_is_detected(builder_cli_folder):
    assert not (builder_cli_folder / "aipc.json").exists()
    assert registry().call(BACKEND, "aipc_detect_artifact", folder=builder_cli_folder) == ["int4"]


def test_builder_cli_folder_runs_through_aipc_run(builder_cli_folder):
    done = run_aipc("run", str(builder_cli_folder), "Can you introduce yourself?", "--backend", BACKEND,
                    "-n", "9", "--json", "-o", "threads=1")
    assert done.returncode == 0, done.stderr[-2000:]
    result = last_json(done.stdout)
    assert result["usage"]["generated_tokens"] <= 9 and result["usage"]["generated_tokens"] >= 1
    assert isinstance(result["text"], str)


def test_downloaded_layout_loads(builder_cli_folder, tmp_path):
    """The layout of microsoft/Phi-3-mini-4k-instruct-onnx's subfolders: a custom model file name
    (genai_config.json names it), tokenizer files beside it, no aipc.json."""
    folder = tmp_path / "cpu_and_mobile" / "cpu-int4-rtn-block-32-acc-level-4"
    shutil.copytree(builder_cli_folder, folder)
    name = "phi3-mini-4k-instruct-cpu-int4-rtn-block-32-acc-level-4.onnx"
    (folder / "model.onnx").rename(folder / name)
    (folder / "model.onnx.data").rename(folder / f"{name}.data")
    import onnx

    model = onnx.load(str(folder / name), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = f"{name}.data"
    onnx.save(model, str(folder / name))
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"]["filename"] = name
    (folder / "genai_config.json").write_text(json.dumps(config))
    loaded = aipc.load(str(folder))
    assert (loaded.backend, loaded.precision, loaded.device) == (BACKEND, "int4", "CPU")
    assert loaded.complete("Hello", max_new_tokens=4, ignore_eos=True) is not None
    assert loaded.usage.generated_tokens == 4


def test_dml_target_fp16_is_detected(dml_fp16_folder):
    assert registry().call(BACKEND, "aipc_detect_artifact", folder=dml_fp16_folder) == ["fp16"]


def test_dml_target_fp16_runs_on_the_cpu_provider_under_auto(dml_fp16_folder, reference):
    """Device AUTO: DirectML when present, else the CPU provider; fp16 built for dml is exact."""
    model = aipc.load(str(dml_fp16_folder), device="AUTO", options={"threads": "1"})
    expected = "dml" if model.loaded.runtime and sys.platform == "win32" else "cpu"
    assert model.loaded.extra == {"provider": expected, "built_for": "dml", "threads": 1}
    prompt = model.format_prompt("Can you introduce yourself?")
    from aipc.types import GenerationConfig

    config = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    got = [i for c in model.raw_stream(prompt, config) for i in c.ids]
    want = [i for c in reference.raw_stream(prompt, config) for i in c.ids]
    assert got == want


def test_fp16_on_the_cpu_device_is_refused(dml_fp16_folder):
    with pytest.raises(UnsupportedPrecisionError, match="fp16 on CPU"):
        aipc.load(str(dml_fp16_folder), device="CPU")


@no_dml
def test_asking_for_dml_fails_cleanly_with_the_reason(dml_fp16_folder, tiny):
    with pytest.raises(BackendUnavailableError, match="DirectML needs Windows"):
        aipc.load(str(dml_fp16_folder), device="DML")
    with pytest.raises(BackendUnavailableError, match="DirectML needs Windows"):
        aipc.load(str(tiny), backend=BACKEND, precision="int4", device="DML")


@no_dml
def test_asking_for_dml_in_the_cli_says_why(tiny):
    done = run_aipc("run", str(tiny), "Hi", "--backend", BACKEND, "--device", "DML", "-n", "2")
    assert done.returncode != 0
    assert "DirectML needs Windows" in done.stderr and "Traceback" not in done.stderr


@no_dml
def test_the_load_hook_itself_refuses_dml(dml_fp16_folder):
    """Called directly (the core checks presence first), the hook still never runs on the CPU."""
    from aipc.runtime import LoadRequest
    from aipc.types import Manifest

    request = LoadRequest(backend=BACKEND, artifact_dir=dml_fp16_folder, device="DML", options={},
                          manifest=Manifest(backend=BACKEND, precision="fp16", device="DML", source={}),
                          cache_dir=dml_fp16_folder)
    with pytest.raises(BackendUnavailableError, match="--device AUTO"):
        registry().call(BACKEND, "aipc_load", request=request)


def test_folders_that_are_not_genai_models_are_not_claimed(tiny, tmp_path):
    assert registry().call(BACKEND, "aipc_detect_artifact", folder=tiny) == []
    (tmp_path / "genai_config.json").write_text("{}")
    assert registry().call(BACKEND, "aipc_detect_artifact", folder=tmp_path) == []
