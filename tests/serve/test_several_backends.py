"""Several backends in one ``aipc serve``: ``--model NAME=MODEL@BACKEND:PRECISION:DEVICE``.

The tiny random Phi-3 served twice from one port: as ``ref`` on the reference backend at fp32
and as ``other`` on the backend named by ``AIPC_TEST_SERVE_BACKEND`` (each backend's tox env runs
this file on itself; the core env serves the reference at fp16 as the other). Greedy answers of
two fp32 backends must agree token for token (the conformance suite's exactness, through HTTP).
"""

from __future__ import annotations

import os
import sys
import threading

import pytest
from serve_support import error_of, linked_model, running_server

BACKEND = os.environ.get("AIPC_TEST_SERVE_BACKEND", "transformers")
HI = [{"role": "user", "content": "hi"}]


def other_precision() -> str:
    if BACKEND == "transformers":
        return "fp16"
    from aipc.plugins import registry

    info = registry().get(BACKEND).info
    device = next(d for d in info.devices if d.present)
    return "fp32" if "fp32" in device.precisions else info.default_precision


PRECISION = other_precision()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_phi3):
    link = linked_model(tmp_path_factory, tiny_phi3)
    with running_server(tmp_path_factory, "--model", f"ref={link}@transformers:fp32",
                        "--model", f"other={link}@{BACKEND}:{PRECISION}") as server:
        yield server


def ask(server, model: str, n: int = 8):
    with server.http() as http:
        response = http.post("/v1/chat/completions", json={"model": model, "messages": HI, "max_tokens": n,
                                                           "ignore_eos": True})
    assert response.status_code == 200, response.text
    return response


def test_each_model_runs_on_its_own_backend_and_says_so(server):
    ref, other = ask(server, "ref"), ask(server, "other")
    assert ref.headers["X-Aipc-Backend"].split("/")[0::2] == ["transformers", "fp32"]
    assert other.headers["X-Aipc-Backend"].split("/")[0::2] == [BACKEND, PRECISION]
    models = {m.id: m for m in server.client().models.list().data}
    assert set(models) == {"ref", "other"}
    assert (models["other"].aipc["backend"], models["other"].aipc["precision"]) == (BACKEND, PRECISION)
    assert models["ref"].aipc["backend"] == "transformers"
    if PRECISION == "fp32":  # two fp32 backends, the same prompt, greedy: the same tokens
        assert ref.json()["choices"][0]["message"]["content"] == other.json()["choices"][0]["message"]["content"]


def test_the_two_models_serve_at_once(server):
    answers: dict[str, int] = {}

    def one(model: str) -> None:
        answers[model] = ask(server, model, 24).json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=one, args=(m,)) for m in ("ref", "other", "ref", "other")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == {"ref": 24, "other": 24}
    status = server.health()["models"]
    assert status["ref"]["completed"] >= 3 and status["other"]["completed"] >= 3


def test_the_shared_model_name_is_ambiguous_and_refused(server, tiny_phi3):
    with server.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "tiny-phi3", "messages": HI})
    assert response.status_code == 404 and "ref, other" in error_of(response)["message"]


@pytest.mark.parametrize("value, said", [("x=tiny@nosuch", "--model x: "), ("tiny@transformers:int3", "--model tiny: ")])
def test_a_bad_model_setting_stops_the_server_before_it_starts(value, said):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "aipc", "serve", "--port", "9", "--model", value],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
