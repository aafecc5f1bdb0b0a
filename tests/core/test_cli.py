"""The command line: help, errors as one line, streaming, Ctrl-C, JSON output, models, chat."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from aipc.cli import cli

COMMANDS = ["backends", "run", "chat", "quantize", "models", "conformance"]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS], ["models", "rm"]])
def test_every_command_explains_itself(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output and len(result.output.splitlines()) > 4


def test_run_help_names_every_setting():
    text = CliRunner().invoke(cli, ["run", "--help"]).output
    for option in ("--backend", "--precision", "--device", "--system", "--max-new-tokens", "--temperature",
                   "--top-p", "--top-k", "--seed", "--stop", "--no-stream", "--json", "-o, --option"):
        assert option in text


def one_line_error(result, *words):
    assert getattr(result, "returncode", getattr(result, "exit_code", 0)) != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines, result.stderr
    assert lines[-1].startswith("Error: "), lines
    for word in words:
        assert word in lines[-1], lines[-1]


@pytest.fixture
def corrupt_artifact(tmp_path, tiny_phi3):
    import aipc

    path = aipc.quantize(str(tiny_phi3), backend="transformers", precision="fp32")
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return broken


def test_bad_inputs_give_one_clear_line(tiny_phi3, tmp_path, corrupt_artifact, monkeypatch):
    """In-process (click's CliRunner); the subprocess tests below cover the real entry point."""
    tiny = str(tiny_phi3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "fake.gguf").write_text("not a gguf")
    cases = [
        (("run", tiny, "Hi", "-b", "nope"), ["unknown backend 'nope'"]),
        (("run", tiny, "Hi", "-p", "int4"), ["no int4"]),
        (("run", tiny, "Hi", "-p", "int3"), ["unknown precision"]),
        (("run", tiny, "Hi", "-d", "NPU"), ["no device 'NPU'"]),
        (("run", tiny, "   "), ["prompt is empty"]),
        (("run", tiny, "Hi", "-t", "-1"), ["temperature"]),
        (("run", tiny, "Hi", "--top-p", "0"), ["top_p"]),
        (("run", tiny, "Hi", "-n", "0"), ["max_new_tokens"]),
        (("run", tiny, "Hi", "-o", "threads=zero"), ["threads"]),
        (("run", tiny, "Hi", "-o", "novalue"), ["KEY=VALUE"]),
        (("run", "no-such-model", "Hi"), ["unknown model"]),
        (("run", str(tmp_path / "missing"), "Hi"), ["no such file"]),
        (("run", str(tmp_path / "empty"), "Hi"), ["not a model folder"]),
        (("run", str(tmp_path / "notes.txt"), "Hi"), ["not a .gguf"]),
        (("run", str(tmp_path / "fake.gguf"), "Hi"), ["fake.gguf"]),
        (("run", str(corrupt_artifact), "Hi"), ["cannot load"]),
        (("run", tiny, "word " * 5000, "-n", "2"), ["prompt has", "context is 4096"]),
        (("run", "phi-3-mini-4k-instruct", "Hi"), ["Hugging Face hub", "pass DIR as the model"]),
        (("models", "rm", "nothing-like-this"), ["not in the cache"]),
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for args, words in cases:
        one_line_error(CliRunner().invoke(cli, args), *words)


def test_corrupt_manifest_is_a_clear_error(aipc_cli, corrupt_artifact):
    (corrupt_artifact / "aipc.json").write_text("{")
    one_line_error(aipc_cli("run", str(corrupt_artifact), "Hi"), "corrupt")


def test_run_streams_and_reports_json(aipc_cli, tiny_phi3):
    result = aipc_cli("run", str(tiny_phi3), "Hello", "-n", "5", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"] == "transformers" and data["usage"]["generated_tokens"] == 5
    assert data["usage"]["finish_reason"] == "length" and result.stderr == ""
    plain = aipc_cli("run", str(tiny_phi3), "Hello", "-n", "5", "--no-stream")
    assert plain.stdout.rstrip("\n") == data["text"]


def test_python_m_aipc_and_quantize_json(aipc_cli, tiny_phi3, tmp_path):
    out = tmp_path / "artifact"
    result = aipc_cli("quantize", str(tiny_phi3), "-b", "transformers", "-p", "fp16", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["path"] == str(out) and data["manifest"]["precision"] == "fp16"
    again = aipc_cli("quantize", str(tiny_phi3), "-b", "transformers", "--output", str(out))
    one_line_error(again, "exists and is not empty")
    ran = aipc_cli("run", str(out), "Hi", "-n", "2", "--json")
    assert json.loads(ran.stdout)["precision"] == "fp16"


def test_ctrl_c_mid_stream_exits_130_without_traceback(tiny_phi3):
    # --ignore-eos: a random model may end its answer before the signal is handled (exit 0)
    args = [sys.executable, "-m", "aipc", "run", str(tiny_phi3), "Tell me a story.", "-n", "4000", "--ignore-eos"]
    # SIGINT back to its default in the child: a test run started in the background (`cmd &`) ignores
    # it, children inherit that, and Python then installs no KeyboardInterrupt handler
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=0,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert run.stdout.read(1), "no streamed output"
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130
    assert "Traceback" not in err and err.strip().endswith("Interrupted."), err


def test_chat_keeps_the_conversation(aipc_cli, tiny_phi3):
    result = aipc_cli("chat", str(tiny_phi3), "-n", "3", "-v", input="Hello\nAnd again\n/exit\n")
    assert result.returncode == 0, result.stderr
    lengths = [int(line.split("prompt ")[1].split(" tok")[0]) for line in result.stderr.splitlines() if "prompt " in line]
    assert len(lengths) == 2 and lengths[1] > lengths[0] + 3, "the second turn does not carry the first"


def test_models_lists_and_removes(aipc_cli, tiny_phi3, tmp_path):
    env = {"AIPC_HOME": str(tmp_path / "home")}
    assert aipc_cli("quantize", str(tiny_phi3), "-b", "transformers", env=env).returncode == 0
    listing = json.loads(aipc_cli("models", "--json", env=env).stdout)
    (entry,) = listing["cached"]
    assert entry["kind"] == "artifact" and entry["backend"] == "transformers" and entry["size"] > 0
    assert "smollm2-135m-instruct" in listing["catalogue"]
    removed = aipc_cli("models", "rm", entry["name"], env=env)
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert json.loads(aipc_cli("models", "--json", env=env).stdout)["cached"] == []


def test_cli_start_imports_no_runtime():
    """`aipc --help` and `aipc backends` must not import torch, transformers or any runtime."""
    code = ("import sys, aipc.cli\nfrom aipc.plugins import registry\nregistry()\n"
            "heavy = [m for m in ('torch', 'transformers', 'openvino', 'onnxruntime_genai', 'numpy', 'optimum')"
            " if m in sys.modules]\nprint(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported at start: {result.stdout}"


def test_a_closed_pipe_ends_quietly():
    """`aipc backends | head -n 1`: the reader may be gone before aipc writes; no "Error:" then."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "aipc", "backends"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 1 and done.stderr == "", done.stderr
