"""A folder exported by the user with the `optimum-cli export openvino` command line (no aipc
manifest) is recognised as an OpenVINO artifact and runs through `aipc run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import aipc
from aipc.cache import area, fingerprint


def optimum_cli() -> str:
    script = Path(sys.executable).parent / "optimum-cli"
    if not script.exists():
        pytest.skip("optimum-cli is not installed in this environment")
    return str(script)


@pytest.fixture(scope="session")
def cli_exports(tiny):
    """``cli_exports(weight_format)`` -> a folder written by optimum-cli itself (cached)."""
    made = {}

    def get(weight_format: str) -> Path:
        if weight_format in made:
            return made[weight_format]
        out = area("test-exports") / f"{tiny.name}-{fingerprint(tiny)}-optimum-cli-{weight_format}"
        if not (out / "openvino_detokenizer.xml").is_file():
            command = [optimum_cli(), "export", "openvino", "--model", str(tiny), "--task", "text-generation-with-past",
                       "--weight-format", weight_format]
            if weight_format == "int4":
                command += ["--group-size", "64", "--ratio", "1.0", "--sym"]
            done = subprocess.run([*command, str(out)], capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stderr[-3000:]
        assert not (out / "aipc.json").exists()
        made[weight_format] = out
        return out

    return get


@pytest.mark.parametrize("weight_format", ["int4", "fp16"])
def test_cli_export_is_detected(cli_exports, weight_format):
    from aipc_openvino.runtime import detect

    folder = cli_exports(weight_format)
    assert detect(folder) == weight_format
    from aipc.plugins import registry

    detected = registry().call("openvino", "aipc_detect_artifact", folder=folder)
    assert weight_format in detected


def test_cli_export_runs_through_aipc_run(cli_exports, cli_run):
    folder = cli_exports("int4")
    done = cli_run("run", str(folder), "Can you introduce yourself?", "--max-new-tokens", "8", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert (result["backend"], result["precision"], result["device"]) == ("openvino", "int4", "CPU")
    assert 1 <= result["usage"]["generated_tokens"] <= 8


def test_cli_export_loads_through_the_python_api(cli_exports, reference, stream_raw):
    model = aipc.load(str(cli_exports("fp16")), backend="openvino")
    assert (model.backend, model.precision) == ("openvino", "fp16")
    assert model.manifest.source["kind"] == "foreign"
    _, want, _ = stream_raw(reference, "Can you introduce yourself?", max_new_tokens=16, ignore_eos=True)
    _, got, _ = stream_raw(model, "Can you introduce yourself?", max_new_tokens=16, ignore_eos=True)
    assert got == want, "an optimum-cli fp16 export does not follow the reference"
