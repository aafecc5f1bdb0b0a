"""``aipc serve``'s OpenAI Responses API (``POST /v1/responses``) driven by the official openai client.

The tiny random Phi-3 on the reference backend, served as ``tiny-phi3`` with an API key and
``--max-queue 1``; long generations use aipc's ``ignore_eos``.
"""

from __future__ import annotations

import threading

import pytest
from serve_support import error_of, linked_model, openai, running_server

KEY = "test-key-responses"
MODEL = "tiny-phi3"
LONG = {"ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_phi3):
    link = linked_model(tmp_path_factory, tiny_phi3, MODEL)
    with running_server(tmp_path_factory, "--model", str(link), "--backend", "transformers",
                        "--max-queue", "1", api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def test_string_input(client):
    answer = client.responses.create(model=MODEL, input="hi", max_output_tokens=5, extra_body=LONG)
    assert answer.object == "response" and answer.model == MODEL and answer.id.startswith("resp_")
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"
    assert isinstance(answer.output_text, str) and answer.output[0].role == "assistant"
    assert answer.usage.output_tokens == 5 and answer.usage.input_tokens > 0
    assert answer.usage.total_tokens == answer.usage.input_tokens + 5
    assert answer.store is False


def test_messages_and_instructions_match_the_chat_api(client):
    messages = [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    answer = client.responses.create(model=MODEL, input=messages, instructions="Be brief.", max_output_tokens=8,
                                     extra_body=LONG)
    chat = client.chat.completions.create(model=MODEL, max_tokens=8, extra_body=LONG, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert answer.output_text == chat.choices[0].message.content
    assert answer.usage.input_tokens == chat.usage.prompt_tokens


def test_streaming_events(client):
    whole = client.responses.create(model=MODEL, input="hi", max_output_tokens=10)
    events = list(client.responses.create(model=MODEL, input="hi", max_output_tokens=10, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == events[-4].text
    assert events[-1].response.output_text == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_json_format(client):
    answer = client.responses.create(model=MODEL, input="hi", max_output_tokens=20,
                                     text={"format": {"type": "json_object"}})
    assert answer.status in ("completed", "incomplete")


@pytest.mark.parametrize(("field", "value"), [
    ("previous_response_id", "resp_123"),
    ("tools", [{"type": "function", "name": "f", "parameters": {"type": "object"}}]),
    ("reasoning", {"effort": "high"}),
    ("background", True),
    ("truncation", "auto"),
])
def test_what_it_cannot_do_is_refused_by_name(client, field, value):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="hi", **{field: value})
    assert caught.value.status_code == 400 and field in caught.value.message


def test_bad_input(server, client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-5", input="hi")
    with server.http() as http:
        for body in ({"model": MODEL, "input": 5}, {"model": MODEL, "input": []},
                     {"model": MODEL, "input": [{"type": "input_image", "image_url": "x"}]},
                     {"model": MODEL, "input": "hi", "max_output_tokens": 0}):
            response = http.post("/v1/responses", json=body)
            assert response.status_code == 400, body
            error_of(response)
        bad = http.post("/v1/responses", content=b"{nope")
        assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_json"
    with server.http(headers={}) as http:
        assert http.post("/v1/responses", json={"model": MODEL, "input": "hi"}).status_code == 401


def test_full_queue_is_429(server, client):
    results: list = []

    def one() -> None:
        try:
            results.append(client.responses.create(model=MODEL, input="hi", max_output_tokens=50, extra_body=LONG))
        except openai.RateLimitError as error:
            results.append(error)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(results) == 6 and refused and len(results) - len(refused) >= 2


def test_disconnect_mid_stream_stops_generation(server, client):
    before = server.model_status(MODEL)["cancelled"]
    stream = client.responses.create(model=MODEL, input="hi", max_output_tokens=2000, stream=True, extra_body=LONG)
    for index, _ in enumerate(stream):
        if index == 6:
            break
    stream.close()
    status = server.wait_for(lambda h: h["models"][MODEL]["cancelled"] > before and not h["models"][MODEL]["running"],
                             timeout=10, what="the cancelled generation")["models"][MODEL]
    assert status["last_finish_reason"] == "cancelled" and status["last_completion_tokens"] < 1000
