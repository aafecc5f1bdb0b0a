"""``aipc serve`` driven by the official openai client and by raw HTTP, on the tiny Phi-3.

One server for the module: the tiny random Phi-3 (fast, answers garbage, deterministic when
greedy) on the reference backend, with an API key and ``--max-queue 1``. It is served through a
link named ``tiny-phi3`` (its model id), and long generations use ``ignore_eos``, so nothing
here depends on the test model's folder name or on where its random weights emit the end token.
"""

from __future__ import annotations

import json
import re

import pytest
from serve_support import concurrently, error_of, httpx, linked_model, openai, running_server

KEY = "test-key-123"
MODEL = "tiny-phi3"
HI = [{"role": "user", "content": "hi"}]
LONG = {"ignore_eos": True}  # extra_body: run to max_tokens


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, tiny_phi3):
    return linked_model(tmp_path_factory, tiny_phi3, MODEL)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_path):
    with running_server(tmp_path_factory, "--model", str(model_path), "--backend", "transformers",
                        "--max-queue", "1", api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return server.client()


# ---------------------------------------------------------------------------------- the happy paths


def test_models_list_names_the_served_model(client, model_path):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "aipc"
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve(str(model_path)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_completion(client):
    answer = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5, extra_body=LONG)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == MODEL
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens == 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 5


def test_chat_accepts_max_completion_tokens_the_model_path_and_text_parts(client, model_path):
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    answer = client.chat.completions.create(model=str(model_path), messages=parts, max_completion_tokens=3,
                                            extra_body=LONG)
    assert answer.usage.completion_tokens == 3 and answer.model == MODEL
    plain = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3, extra_body=LONG)
    assert answer.choices[0].message.content == plain.choices[0].message.content


def test_chat_streaming_matches_non_streaming(client):
    whole = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=12)
    stream = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_streaming_and_not(client):
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10)
    assert whole.object == "text_completion" and whole.usage.completion_tokens <= 10
    assert whole.choices[0].finish_reason in ("stop", "length")
    pieces = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_strings_cut_the_answer(client):
    text = client.completions.create(model=MODEL, prompt="hi", max_tokens=40, extra_body=LONG).choices[0].text
    word = re.search(r"[A-Za-z]{3,}", text[4:])
    assert word, text
    stop = word.group()
    cut = client.completions.create(model=MODEL, prompt="hi", max_tokens=40, stop=[stop], extra_body=LONG)
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_sampling_with_a_seed_repeats(client):
    runs = [client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=1.0, top_p=0.9,
                                           seed=7).choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------- errors via the client


def test_client_errors(server, client):
    with pytest.raises(openai.NotFoundError) as found:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=HI, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="word " * 6000, max_tokens=5)
    assert too_long.value.code == "context_length_exceeded" and "4096" in too_long.value.message
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()


# ---------------------------------------------------------------------------------- errors via raw HTTP


def test_api_key_is_required(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        with server.http(headers=headers) as http:
            for response in (http.get("/v1/models"), http.get("/health"),
                             http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})):
                assert response.status_code == 401, response.text
                assert error_of(response)["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"] == "Bearer"


def test_body_too_large(server):
    big = json.dumps({"model": MODEL, "prompt": "x" * (3 * 1024 * 1024)}).encode()

    def chunked():  # no Content-Length: the server must count
        for start in range(0, len(big), 256 * 1024):
            yield big[start:start + 256 * 1024]

    with server.http() as http:
        for body in (big, chunked()):
            response = http.post("/v1/completions", content=body)
            assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


def test_malformed_json(server):
    with server.http() as http:
        for body in (b'{"model": "tiny', b"", b"[1, 2]", b"null"):
            response = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (body, response.text)
            error_of(response)


@pytest.mark.parametrize("field, value", [
    ("max_tokens", "5"), ("max_tokens", 2.5), ("temperature", "hot"), ("stream", "yes"), ("messages", "hi"),
    ("messages", [{"role": "user"}]), ("messages", [{"role": "user", "content": 3}]), ("stop", [1]),
    ("seed", True), ("model", 7), ("stream_options", {"include_usage": "yes"}),
])
def test_wrong_types_are_400(server, field, value):
    with server.http() as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, field: value})
    assert response.status_code == 400, response.text
    assert error_of(response)["param"].split(".")[0] == field


@pytest.mark.parametrize("field, value", [
    ("max_tokens", 0), ("max_completion_tokens", -1), ("temperature", -0.5), ("top_p", 0), ("top_p", 1.5),
    ("seed", -1), ("n", 2), ("messages", []), ("messages", [{"role": "robot", "content": "hi"}]),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
    ("stop", [""]),
])
def test_invalid_values_are_400(server, field, value):
    with server.http() as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 2,
                                                           field: value})
    assert response.status_code == 400, response.text
    error_of(response)


def test_unknown_model_and_route_are_404(server):
    with server.http() as http:
        response = http.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"})
        assert response.status_code == 404
        assert error_of(response) | {"message": ""} == {"message": "", "type": "invalid_request_error",
                                                        "param": "model", "code": "model_not_found"}
        response = http.get("/v1/nothing-here")
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def test_curl_without_a_content_type_works(server):
    with server.http() as http:
        body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2, **LONG})
        form = {**server.headers(), "Content-Type": "application/x-www-form-urlencoded"}
        response = http.post("/v1/completions", content=body, headers=form)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2


# ---------------------------------------------------------------------------------- load and cancellation


def test_parallel_requests_complete_or_get_429(server, client):
    done, refused = concurrently(lambda: client.chat.completions.create(model=MODEL, messages=HI, max_tokens=50, extra_body=LONG), openai.RateLimitError)
    assert all(r.usage.completion_tokens > 0 for r in done)
    assert len(done) >= 2 and refused, "one running + one waiting must pass, the rest be refused"
    for error in refused:
        assert error.status_code == 429 and error.code == "queue_full"
        assert int(error.response.headers["retry-after"]) >= 1
    status = server.wait_for(lambda h: not h["models"][MODEL]["running"], what="idle")["models"][MODEL]
    assert status["waiting"] == 0 and status["rejected"] >= len(refused)
    answer = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, extra_body=LONG)
    assert answer.usage.completion_tokens == 2


def test_disconnect_mid_stream_stops_generation(server, client):
    before = server.model_status(MODEL)["cancelled"]
    stream = client.completions.create(model=MODEL, prompt="hi", max_tokens=2000, stream=True, extra_body=LONG)
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()
    status = server.wait_for(lambda h: h["models"][MODEL]["cancelled"] > before and not h["models"][MODEL]["running"],
                             timeout=10, what="the cancelled generation")["models"][MODEL]
    assert status["last_finish_reason"] == "cancelled" and status["last_completion_tokens"] < 1000
    assert "finish_reason=cancelled" in server.log()


def test_disconnect_while_waiting_for_a_whole_answer_stops_generation(server):
    before = server.model_status(MODEL)["cancelled"]
    with server.http(timeout=1.0) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2000, **LONG})
    status = server.wait_for(lambda h: h["models"][MODEL]["cancelled"] > before and not h["models"][MODEL]["running"],
                             timeout=10, what="the cancelled generation")["models"][MODEL]
    assert status["last_finish_reason"] == "cancelled" and status["last_completion_tokens"] < 10000


def test_server_is_healthy_at_the_end(server):
    health = server.health()
    assert health["status"] == "ok"
    status = health["models"][MODEL]
    assert status | {"loaded": True, "running": False, "waiting": 0, "loads": 1} == status
    assert "Traceback" not in server.log()
