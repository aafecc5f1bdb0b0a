"""Structured output and tool calling through ``aipc serve`` (issue 13), with the real openai client.

SmolLM2 on the reference backend, which honours every constraint kind (llguidance), or on the
backend named by ``AIPC_TEST_SERVE_BACKEND`` (each backend's tox env runs this file on itself). Schemas
are bounded (maxLength, maximum, enums, additionalProperties false) so every answer ends in a
few tokens. SmolLM2's template knows no tools: tools and tool turns go through aipc's generic
format (aipc.tools).
"""

from __future__ import annotations

import json
import os

import pytest
from serve_support import error_of, openai, running_server

jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

from aipc.conformance.support import SCHEMA_PROMPTS, SCHEMAS  # noqa: E402
from aipc.tools import CallStream, generic_messages, parse_native, ToolFormat  # noqa: E402

MODEL = "smollm2-135m-instruct"
BACKEND = os.environ.get("AIPC_TEST_SERVE_BACKEND", "transformers")
PRECISION = os.environ.get("AIPC_TEST_SERVE_PRECISION")  # default: the backend's
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}},
        "required": ["timezone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone",
                                           "parameters": TIME}}]
SCHEMA_OF = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2):  # smollm2: fetched and converted into the cache beforehand
    with running_server(tmp_path_factory, "--backend", BACKEND, *(("--precision", PRECISION) if PRECISION else ())) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def check_call(call) -> dict:
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in SCHEMA_OF
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMA_OF[call.function.name])
    return arguments


# ---------------------------------------------------------------------------------- response_format


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_json_schema_strict(client, index):
    schema = SCHEMAS[index]
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": SCHEMA_PROMPTS[index]}], max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": f"s{index}", "schema": schema, "strict": True}})
    choice = answer.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object(client):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=60,
                                            response_format={"type": "json_object"})
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(answer.choices[0].message.content), dict)
    else:  # any object may run long: a cut is reported as such
        assert answer.choices[0].finish_reason == "length"


def test_the_clients_parse_helper(client):
    class City(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=24)
        country: str = pydantic.Field(max_length=24)

    answer = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": SCHEMA_PROMPTS[0]}],
                                           response_format=City, max_tokens=60)
    assert isinstance(answer.choices[0].message.parsed, City)


def test_streamed_json_schema(client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": SCHEMA_PROMPTS[2]}],
                                            max_tokens=40, stream=True, response_format={
                                                "type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMAS[2]}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMAS[2])
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_cut_under_a_schema_says_length(client):
    answer = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=3,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}})
    assert answer.choices[0].finish_reason == "length"


# ---------------------------------------------------------------------------------- tools


def test_tool_choice_required(client):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=60)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    check_call(choice.message.tool_calls[0])


def test_named_function(client):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=60,
                                            tool_choice={"type": "function", "function": {"name": "get_time"}})
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_time"
    check_call(choice.message.tool_calls[0])


def test_streamed_tool_call_assembles(client):
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=60, stream=True,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls: dict[int, dict] = {}  # as the openai docs accumulate them
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            if delta.function and delta.function.name:
                call["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER)


def test_the_stream_helper_assembles_the_call(client):
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                        max_tokens=60) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    check_call(final.choices[0].message.tool_calls[0])


def test_a_follow_up_with_the_tool_result_answers(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=60,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'}]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=40)
    message = answer.choices[0].message
    if message.tool_calls:  # "auto": the model may call again, with valid arguments
        assert answer.choices[0].finish_reason == "tool_calls"
        check_call(message.tool_calls[0])
    else:
        assert message.content and answer.choices[0].finish_reason in ("stop", "length")
    text = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="none",
                                          max_tokens=40)
    assert text.choices[0].message.content and not text.choices[0].message.tool_calls
    assert text.choices[0].finish_reason in ("stop", "length")


def test_auto_answers_text_or_one_valid_call(client):
    for messages in (ASK, [{"role": "user", "content": "Say hello."}]):
        stream = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=40,
                                                stream=True)
        chunks = [c for c in stream if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
        finish = chunks[-1].choices[0].finish_reason
        if deltas:
            assert finish == "tool_calls" and deltas[0].function.name in SCHEMA_OF
            arguments = "".join(d.function.arguments or "" for d in deltas)
            jsonschema.validate(json.loads(arguments), SCHEMA_OF[deltas[0].function.name])
        else:
            assert text.strip() and "<tool_call>" not in text and finish in ("stop", "length")


def test_auto_follows_examples_of_calls_in_the_history(client):
    """Two earlier calls in the history (generic format) lead SmolLM2 to call again: the call,
    generated after the grammar-constrained first step, validates, streamed or not."""
    def turn(city: str, i: int) -> list[dict]:
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city, "unit": "celsius"})}}
        return [{"role": "user", "content": f"What is the weather in {city}?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": f"call_{i}", "content": "20"},
                {"role": "assistant", "content": f"It is 20 degrees in {city}."}]

    messages = turn("Rome", 1) + turn("Berlin", 2) + ASK
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=60)
    assert answer.choices[0].finish_reason == "tool_calls", answer
    assert check_call(answer.choices[0].message.tool_calls[0])["city"] == "Paris"
    stream = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=60, stream=True)
    deltas = [d for c in stream if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id.startswith("call_") and deltas[0].type == "function"
    assert deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert arguments == answer.choices[0].message.tool_calls[0].function.arguments


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("field, value", [
    ("n", 2), ("logprobs", True), ("top_logprobs", 3), ("logit_bias", {"1": 5}), ("presence_penalty", 0.5),
    ("frequency_penalty", 1.0), ("functions", [{"name": "f", "parameters": {}}]), ("function_call", "auto"),
    ("modalities", ["text", "audio"]), ("response_format", {"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "object", "properties": {"a": {"type": "strange"}}}}}),
    ("response_format", {"type": "xml"}), ("tool_choice", "required"),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]),
    ("tools", [{"type": "custom", "custom": {"name": "f"}}]), ("tools", []),
])
def test_fields_that_change_the_answer_are_implemented_or_refused(server, field, value):
    with server.http() as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 2,
                                                           field: value})
    assert response.status_code == 400, response.text
    assert error_of(response)["param"].split(".")[0] == field


def test_unknown_named_function_and_tool_messages_without_id_are_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=2,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert caught.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK + [{"role": "tool", "content": "1"}], max_tokens=2)
    assert caught.value.body["param"] == "messages.1.tool_call_id"


def test_no_op_values_are_accepted(client):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2, n=1, logprobs=False,
                                            presence_penalty=0, frequency_penalty=0, parallel_tool_calls=False,
                                            response_format={"type": "text"}, tools=TOOLS, tool_choice="none")
    assert answer.choices[0].message.content is not None


def test_completions_refuse_suffix_and_echo(server):
    with server.http() as http:
        for field, value in (("suffix", "end"), ("echo", True), ("logprobs", 2), ("best_of", 3)):
            response = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2,
                                                          field: value})
            assert response.status_code == 400 and error_of(response)["param"] == field, response.text


# ---------------------------------------------------------------------------------- the generic format


def test_generic_format_renders_tools_calls_and_results():
    messages = [{"role": "system", "content": "Be brief."}, *ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}]
    out = generic_messages(messages, TOOLS)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n") and '"name": "get_time"' in out[0]["content"]
    assert out[2]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert out[3]["content"] == "<tool_response>21 C</tool_response>\n<tool_response>sunny</tool_response>"
    assert generic_messages(ASK, None) == ASK


def test_call_stream_and_native_parsing():
    reader, events = CallStream(), []
    for piece in ['{"na', 'me": "f", "argu', 'ments":', ' {"a": {"b"', ': 1}}', "}"]:
        events += reader.feed(piece)
    events += reader.finish()
    assert events[0] == ("name", "f")
    assert "".join(v for k, v in events if k == "arguments") == reader.arguments == '{"a": {"b": 1}}'
    text, calls = parse_native('Sure. <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', ToolFormat(True))
    assert text == "Sure." and json.loads(calls[0]) == {"name": "f", "arguments": {"x": 1}}
    fmt = ToolFormat(True, "<|tool_call|>", "<|/tool_call|>")
    assert parse_native('<|tool_call|>[{"name": "f", "parameters": {}}]<|/tool_call|>', fmt)[1] == [
        '{"name": "f", "arguments": {}}']
    assert parse_native("no call here", fmt) == ("no call here", [])
