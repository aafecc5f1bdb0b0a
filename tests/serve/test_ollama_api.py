"""``aipc serve``'s Ollama API driven by the official ``ollama`` Python client and by raw HTTP.

One server for the module: the tiny random Phi-3 (answers garbage, deterministic when greedy) on
the reference backend, served as ``tiny-phi3``, with an API key (sent as ``Authorization: Bearer``,
as Ollama clients do) and ``--max-queue 1``. Long generations use aipc's ``ignore_eos`` option.
"""

from __future__ import annotations

import json

import pytest
from serve_support import concurrently, httpx, linked_model, running_server

ollama = pytest.importorskip("ollama", reason="the Ollama API tests use the official ollama client")

KEY = "test-key-ollama"
MODEL = "tiny-phi3"
HI = [{"role": "user", "content": "hi"}]


def opts(n: int, **more) -> dict:
    return {"num_predict": n, "ignore_eos": True, **more}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_phi3):
    link = linked_model(tmp_path_factory, tiny_phi3, MODEL)
    with running_server(tmp_path_factory, "--model", str(link), "--backend", "transformers",
                        "--max-queue", "1", api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"}, trust_env=False, timeout=120)


def error_of(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


# ---------------------------------------------------------------------------------- the happy paths


def test_version_and_tags(client, server):
    with server.http() as http:
        assert http.get("/api/version").json()["version"]
    models = client.list().models
    assert [m.model for m in models] == [MODEL]
    assert models[0].details.format in ("", "transformers")


def test_chat_not_streamed_has_ollama_timings(client):
    answer = client.chat(model=MODEL, messages=HI, stream=False, options=opts(5))
    assert answer.done and answer.done_reason == "length" and answer.model == MODEL
    assert answer.message.role == "assistant" and isinstance(answer.message.content, str)
    assert answer.eval_count == 5 and answer.prompt_eval_count > 0
    for name in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert getattr(answer, name) > 0, name
    assert answer.load_duration >= 0 and answer.total_duration >= answer.eval_duration


def test_chat_streaming_matches_non_streaming(client):
    whole = client.chat(model=MODEL, messages=HI, stream=False, options={"num_predict": 12})
    parts = list(client.chat(model=MODEL, messages=HI, stream=True, options={"num_predict": 12}))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count and parts[-1].done_reason == whole.done_reason


def test_generate_streamed_and_not(client):
    whole = client.generate(model=MODEL, prompt="hi", options=opts(6))
    assert whole.done and whole.eval_count == 6 and whole.done_reason == "length"
    parts = list(client.generate(model=MODEL, prompt="hi", stream=True, options=opts(6)))
    assert "".join(p.response for p in parts) == whole.response and parts[-1].eval_count == 6
    raw = client.generate(model=MODEL, prompt="hi", raw=True, options=opts(3))
    assert raw.eval_count == 3 and raw.prompt_eval_count < whole.prompt_eval_count  # no chat template


def test_options_seed_and_stop(client):
    sampled = [client.generate(model=MODEL, prompt="hi", options=opts(8, temperature=1.0, seed=7, top_k=50))
               for _ in range(2)]
    assert sampled[0].response == sampled[1].response
    text = client.generate(model=MODEL, prompt="hi", options=opts(20)).response
    if len(text) > 4:
        stop = text[2:4]
        cut = client.generate(model=MODEL, prompt="hi", options=opts(20, stop=[stop]))
        assert stop not in cut.response and cut.done_reason == "stop"


def test_format_json_is_accepted(client):
    answer = client.generate(model=MODEL, prompt="hi", format="json", options={"num_predict": 20})
    assert answer.done
    if answer.done_reason == "stop":
        json.loads(answer.response)


def test_show_and_ps_say_what_runs_the_model(client, server):
    client.generate(model=MODEL, prompt="hi", options=opts(1))
    shown = client.show(MODEL)
    info = shown.modelinfo
    assert info["general.architecture"] == "aipc"
    assert info["aipc.backend"] == "transformers" and info["aipc.device"] and info["aipc.precision"]
    assert isinstance(info["aipc.context_length"], int) and info["aipc.context_length"] > 0
    assert shown.details.quantization_level == info["aipc.precision"]
    running = client.ps().models
    assert [m.model for m in running] == [MODEL]
    assert running[0].context_length == info["aipc.context_length"] and running[0].expires_at is not None
    models = server.client().models.list().data
    assert models[0].context_length == info["aipc.context_length"]
    assert models[0].aipc["backend"] == "transformers"


def test_responses_carry_the_backend_header(server):
    with server.http() as http:
        answer = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                                  "options": opts(1)})
        streamed = http.post("/api/chat", json={"model": MODEL, "messages": HI, "options": opts(1)})
        openai_answer = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
    assert answer.status_code == streamed.status_code == openai_answer.status_code == 200
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert lines[-1]["done"] is True
    header = answer.headers["x-aipc-backend"]
    assert header.startswith("transformers/") and header.count("/") == 2 and "?" not in header
    assert streamed.headers["x-aipc-backend"] == header == openai_answer.headers["x-aipc-backend"]


def test_keep_alive_zero_unloads_and_empty_prompt_loads(client, server):
    client.generate(model=MODEL, prompt="hi", options=opts(1))
    gone = client.generate(model=MODEL, prompt="", keep_alive=0)
    assert gone.done and gone.done_reason == "unload"
    assert client.ps().models == []
    loaded = client.generate(model=MODEL, prompt="", keep_alive="5m")
    assert loaded.done and loaded.done_reason == "load"
    assert [m.model for m in client.ps().models] == [MODEL]


# ---------------------------------------------------------------------------------- errors


def test_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama3", messages=HI)
    assert caught.value.status_code == 404 and "llama3" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("llama3")
    assert caught.value.status_code == 404


def test_api_key_guards_the_ollama_api(server):
    with server.http(headers={}) as http:
        for method, path in (("GET", "/api/tags"), ("POST", "/api/chat"), ("POST", "/api/generate"),
                             ("GET", "/api/ps"), ("POST", "/api/show")):
            response = http.request(method, path, json={"model": MODEL})
            assert response.status_code == 401, path
            error_of(response)


@pytest.mark.parametrize("body", [
    {"model": MODEL, "prompt": 5},
    {"model": MODEL, "prompt": "hi", "options": {"temperature": "hot"}},
    {"model": MODEL, "prompt": "hi", "options": {"mirostat": 2}},
    {"model": MODEL, "prompt": "hi", "options": {"no_such_option": 1}},
    {"model": MODEL, "prompt": "hi", "options": {"num_predict": 0}},
    {"model": MODEL, "prompt": "hi", "images": ["aGk="]},
    {"model": MODEL, "prompt": "hi", "keep_alive": "soon"},
    {"model": MODEL, "prompt": "hi", "format": "yaml"},
    {"model": MODEL, "prompt": "hi", "format": {"type": "nonsense"}},
    {"model": "", "prompt": "hi"},
])
def test_bad_requests_are_400(server, body):
    with server.http() as http:
        response = http.post("/api/generate", json=body)
    assert response.status_code == 400, response.text
    error_of(response)


def test_malformed_json_and_refused_endpoints(server):
    with server.http() as http:
        bad = http.post("/api/chat", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
        assert bad.status_code == 400 and "JSON" in error_of(bad)
        create = http.post("/api/create", json={"model": "x", "from": MODEL})
        assert create.status_code == 501 and "/api/create" in error_of(create)
        assert http.post("/api/chat", json={"model": MODEL, "messages": HI, "think": True}).status_code == 400


def test_pull_prepares_a_served_model(client):
    lines = list(client.pull(MODEL, stream=True))
    assert lines[-1].status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("llama3")
    assert caught.value.status_code == 404


def test_delete_removes_the_artifact_and_a_request_makes_it_again(client, server):
    assert client.chat(model=MODEL, messages=HI, options=opts(2)).eval_count == 2  # loaded: artifact in the cache
    assert client.delete(MODEL).status == "success"
    deleted = [line for line in server.log().splitlines() if "deleted its artifact" in line]
    assert deleted and not any(m.model == MODEL for m in client.ps().models), "unloaded, artifact removed"
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete(MODEL)  # the cache no longer has it
    assert caught.value.status_code == 404 and MODEL in str(caught.value)
    assert client.chat(model=MODEL, messages=HI, options=opts(2)).eval_count == 2  # quantized again
    assert client.delete(MODEL).status == "success"  # the one that request made
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete("llama3")
    assert caught.value.status_code == 404


# ---------------------------------------------------------------------------------- load and cancellation


def test_full_queue_is_503(server, client):
    done, refused = concurrently(lambda: client.generate(model=MODEL, prompt="hi", options=opts(50)), ollama.ResponseError)
    assert len(done) >= 2 and refused, "one running + one waiting must pass, the rest be refused"
    assert all(r.eval_count == 50 for r in done)
    assert all(e.status_code == 503 for e in refused)


def test_disconnect_mid_stream_stops_generation(server, client):
    before = server.model_status(MODEL)["cancelled"]
    stream = client.generate(model=MODEL, prompt="hi", stream=True, options=opts(2000))
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()
    status = server.wait_for(lambda h: h["models"][MODEL]["cancelled"] > before and not h["models"][MODEL]["running"],
                             timeout=10, what="the cancelled generation")["models"][MODEL]
    assert status["last_finish_reason"] == "cancelled" and status["last_completion_tokens"] < 1000


def test_disconnect_while_waiting_for_a_whole_answer_stops_generation(server):
    before = server.model_status(MODEL)["cancelled"]
    with server.http(timeout=1.0) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/api/chat", json={"model": MODEL, "messages": HI, "stream": False, "options": opts(10000)})
    status = server.wait_for(lambda h: h["models"][MODEL]["cancelled"] > before and not h["models"][MODEL]["running"],
                             timeout=10, what="the cancelled generation")["models"][MODEL]
    assert status["last_finish_reason"] == "cancelled"
