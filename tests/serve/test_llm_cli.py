"""simonw's ``llm`` command line against ``aipc serve``, through its OpenAI-compatible model
configuration (``extra-openai-models.yaml`` in ``LLM_USER_PATH``: chat, completion and Responses
models pointing at the server), as a user of that tool would set it up.

The tiny random Phi-3 on the reference backend answers garbage; the checks are about the
protocol: the answer arrives (streamed and not), the token limit holds, a schema is honoured,
the key is sent and required, an unknown model is an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import linked_model, running_server

pytest.importorskip("llm", reason="the llm CLI tests need simonw's llm (pip install llm)")

KEY = "test-key-llm"
MODEL = "tiny-phi3"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_phi3):
    link = linked_model(tmp_path_factory, tiny_phi3, MODEL)
    with running_server(tmp_path_factory, "--model", str(link), "--backend", "transformers", api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def llm(server, tmp_path_factory):
    """Run ``llm`` with a user folder that configures aipc's models (and logs nothing)."""
    home = tmp_path_factory.mktemp("llm-home")
    models = [{"model_id": f"aipc-{kind}", "model_name": MODEL, "api_base": f"{server.url}/v1",
               "api_key_name": "aipc", "supports_schema": kind == "chat", **({kind: True} if kind != "chat" else {})}
              for kind in ("chat", "completion", "responses")]
    (home / "extra-openai-models.yaml").write_text(json.dumps(models))  # YAML is a superset of JSON
    (home / "logs-off").write_text("")
    env = {**os.environ, "LLM_USER_PATH": str(home), "NO_PROXY": "*", "no_proxy": "*"}

    def run(*args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).with_name("llm")), *args, *(("--key", key) if key else ())]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)

    return run


def test_llm_lists_the_configured_models(llm):
    done = llm("models", key=None)
    assert done.returncode == 0, done.stderr
    assert all(f"aipc-{kind}" in done.stdout for kind in ("chat", "completion", "responses"))


@pytest.mark.parametrize("kind", ["chat", "completion", "responses"])
@pytest.mark.parametrize("stream", [True, False])
def test_llm_prompts_each_api(llm, server, kind, stream):
    before = server.model_status(MODEL)["completed"]
    done = llm("-m", f"aipc-{kind}", "-o", "max_tokens", "6",
               *(() if stream else ("--no-stream",)), "Say hi")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "Error" not in done.stderr
    status = server.model_status(MODEL)
    assert status["completed"] == before + 1 and status["last_completion_tokens"] <= 6


def test_llm_schema_is_honoured(llm):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}  # bounded: the random model rambles
    done = llm("-m", "aipc-chat", "--schema", json.dumps(schema), "-o", "max_tokens", "80", "Invent a person")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert set(answer) == {"name", "age"} and isinstance(answer["age"], int)


def test_llm_without_the_key_or_with_an_unknown_model_fails(llm, server):
    wrong = llm("-m", "aipc-chat", "-o", "max_tokens", "3", "hi", key="wrong")
    assert wrong.returncode != 0 and "401" in wrong.stderr + wrong.stdout
    assert server.model_status(MODEL)["running"] is False
