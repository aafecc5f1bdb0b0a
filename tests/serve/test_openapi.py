"""``/openapi.json`` describes what the server really accepts and answers, checked by schemathesis
against the live server on 127.0.0.1 (bounded: 10 cases per operation per phase, a fixed seed).

schemathesis sends schema-valid and schema-invalid bodies, wrong methods and missing fields to
every documented operation and checks: no 5xx, every status and media type is documented, valid
data accepted (2xx or 404 for an unserved model) and invalid data refused, 405 with ``Allow``. One
exemption: on ``/v1/chat/completions`` a schema-valid body may still be refused (400 naming the
field) for rules JSON Schema cannot state — ``tool_choice`` naming a tool missing from ``tools``,
a tool's ``parameters`` that are not a valid JSON schema.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import linked_model, running_server

pytest.importorskip("schemathesis", reason="the OpenAPI check needs schemathesis")

CONFIG = """
[[operations]]
include-path = "/v1/chat/completions"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_phi3):
    link = linked_model(tmp_path_factory, tiny_phi3)
    with running_server(tmp_path_factory, "--model", str(link), "--backend", "transformers") as server:
        yield server


def test_every_body_and_error_is_documented(server):
    with server.http() as http:
        document = http.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/api/chat", "/api/generate",
                 "/api/show", "/api/pull"):
        operation = paths[path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"], path
        assert {"200", "400", "401", "404", "413"} <= set(operation["responses"]), path
    assert "text/event-stream" in paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in paths["/api/chat"]["post"]["responses"]["200"]["content"]
    assert "429" in paths["/v1/chat/completions"]["post"]["responses"]
    assert "503" in paths["/api/chat"]["post"]["responses"]
    with server.http() as http:
        wrong = http.get("/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"


def test_schemathesis_finds_nothing(server, tmp_path: Path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = Path(sys.executable).with_name("st")
    done = subprocess.run([str(st), "--config-file", str(config), "run", f"{server.url}/openapi.json",
                           "--max-examples", "10", "--seed", "1", "--workers", "1", "--request-timeout", "60",
                           "--generation-database", "none", "--no-color"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path,  # its .schemathesis/ goes there
                          env={"NO_PROXY": "*", "PATH": str(st.parent), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Traceback" not in server.log() and " 500 " not in server.log()
