"""Model lifecycle in ``aipc serve``: two models, load-on-demand exactly once even when requests
arrive together, keep-alive unloading, clean Ctrl-C, and settings refused at startup.

The server gets an empty AIPC_HOME of its own, so its first request really quantizes.
"""

from __future__ import annotations

import threading
import time

import pytest
from serve_support import openai, running_server

FIRST, SECOND = "tiny-a", "tiny-b"  # the tiny Phi-3 with seeds 0 and 1, served through links of these names
HI = [{"role": "user", "content": "hi"}]
LONG = {"ignore_eos": True}  # extra_body: run to max_tokens


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_phi3):
    from aipc.testing import tiny_phi3_cached

    links = tmp_path_factory.mktemp("models")
    for name, folder in ((FIRST, tiny_phi3), (SECOND, tiny_phi3_cached(seed=1))):
        (links / name).symlink_to(folder, target_is_directory=True)
    home = tmp_path_factory.mktemp("aipc-home")
    with running_server(tmp_path_factory, "-m", str(links / FIRST), "-m", str(links / SECOND), "-b", "transformers",
                        "--keep-alive", "2", env={"AIPC_HOME": str(home)}) as server:
        yield server


def quantized(server, model_id: str) -> int:
    return sum(1 for line in server.log().splitlines() if f"{model_id}: Quantizing" in line)


def test_both_models_are_listed_and_nothing_is_loaded_yet(server):
    assert [m.id for m in server.client().models.list().data] == [FIRST, SECOND]
    assert not any(status["loaded"] for status in server.health()["models"].values())


def test_simultaneous_first_requests_quantize_and_load_once(server):
    client = server.client()
    answers: list = []

    def ask() -> None:
        answers.append(client.chat.completions.create(model=SECOND, messages=HI, max_tokens=3, extra_body=LONG))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 4 and len({a.choices[0].message.content for a in answers}) == 1
    models = server.health()["models"]
    assert models[SECOND]["loads"] == 1 and models[SECOND]["completed"] == 4
    assert not models[FIRST]["loaded"]
    assert quantized(server, SECOND) == 1, server.log()


def test_each_model_answers_with_its_own_weights(server):
    client = server.client()
    texts = [client.completions.create(model=m, prompt="hi", max_tokens=8, extra_body=LONG).choices[0].text
             for m in (FIRST, SECOND)]
    assert texts[0] != texts[1]


def test_an_idle_model_is_unloaded_and_loads_again_from_the_cache(server):
    server.wait_for(lambda h: not any(s["loaded"] for s in h["models"].values()), timeout=15, what="unloading")
    assert f"{SECOND}: unloaded (idle for 2 s)" in server.log()
    answer = server.client().chat.completions.create(model=SECOND, messages=HI, max_tokens=3, extra_body=LONG)
    assert answer.usage.completion_tokens == 3
    assert server.model_status(SECOND)["loads"] == 2 and quantized(server, SECOND) == 1


def test_ctrl_c_answers_open_requests_503_and_stops_cleanly(server):
    client = server.client()
    client.completions.create(model=FIRST, prompt="hi", max_tokens=2)  # something loaded
    outcome: list = []

    def ask_long() -> None:
        try:
            outcome.append(client.completions.create(model=FIRST, prompt="hi", max_tokens=2000, extra_body=LONG))
        except openai.APIStatusError as error:
            outcome.append(error)

    thread = threading.Thread(target=ask_long)
    thread.start()
    server.wait_for(lambda h: h["models"][FIRST]["running"], what="the long request running")
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 15
    thread.join(timeout=30)
    assert outcome and getattr(outcome[0], "status_code", None) == 503, outcome
    assert outcome[0].code == "server_stopping"
    log = server.log()
    assert "server stopping" in log and "Traceback" not in log, log


@pytest.mark.parametrize("args, message", [
    (["--backend", "no-such-backend"], "unknown backend 'no-such-backend'"),
    (["--max-queue", "-1"], "--max-queue must be >= 0"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
])
def test_bad_settings_are_refused_before_starting(aipc_cli, args, message):
    result = aipc_cli("serve", "--port", "9", *args, timeout=60)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Uvicorn running" not in result.stderr
