"""OpenAI's chat and completions API: ``POST /v1/chat/completions``, ``POST /v1/completions``
(both streaming with server-sent events or not), ``GET /v1/models[/ID]``.

Request fields beyond OpenAI's: ``top_k``, ``repetition_penalty`` and ``ignore_eos`` (as vLLM);
other unknown fields are ignored, known ones are type-checked strictly. Fields that would change
the answer are implemented or refused with a 400 naming them (``n`` > 1, ``logprobs``,
``logit_bias``, penalties, legacy ``functions``, ...): never silently dropped.

Structured output and tools (``aipc.tools`` has the formats): ``response_format`` (``text``,
``json_object``, ``json_schema``) becomes the generation's :class:`aipc.constraints.Constraint`;
``tools`` with ``tool_choice`` answer ``message.tool_calls`` (streamed as OpenAI's tool-call
deltas); see :meth:`aipc.server.common.ModelSlot._chat` for how each ``tool_choice`` is generated.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ..errors import InvalidConfigError
from .common import ApiError, Hub, Job, ModelSlot, api_error, collect, first_event, parse as _parse
from .schema import Body as _Strict, Refused, no_op, route

SSE = "text/event-stream"

# ---------------------------------------------------------------------------------- requests




class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class CalledFunction(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


_NEEDS = [  # what refuse_unsupported checks by hand, for the OpenAPI document
    {"if": {"properties": {"role": {"not": {"const": "assistant"}}}},
     "then": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}},
    {"if": {"properties": {"role": {"const": "tool"}}},
     "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string", "minLength": 1}}}},
    {"if": {"required": ["role"], "properties": {"role": {"const": "assistant"}},
            "not": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}},
     "then": {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}}}]


class Message(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra={"allOf": _NEEDS})
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        text = self.content if self.content is None or isinstance(self.content, str) else "".join(
            p.text for p in self.content)
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": text}
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id
        return message


class JsonSchemaFormat(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    model_config = ConfigDict(json_schema_extra={"if": {"properties": {"type": {"const": "json_schema"}}},
                                                 "then": {"required": ["json_schema"],
                                                          "properties": {"json_schema": {"type": "object"}}}})
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class ChosenFunction(_Strict):
    name: str


class ToolChoice(_Strict):
    type: Literal["function"]
    function: ChosenFunction


class _Request(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # top_k, repetition_penalty, ignore_eos: vLLM's extensions
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool | None = None  # as in vLLM: generate exactly max_tokens (benchmarks, tests)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: Annotated[int | None, WithJsonSchema({"enum": [None, 1]})] = Field(None, ge=1)  # one choice
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # fields aipc does not implement: refused (400 naming the field) unless absent or at their no-op value
    logprobs: Refused = None
    top_logprobs: Refused = None
    logit_bias: Refused = None
    presence_penalty: Refused = None
    frequency_penalty: Refused = None
    best_of: Annotated[Any, WithJsonSchema({"enum": [None, 1]})] = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = ("logprobs", "top_logprobs", "logit_bias", "presence_penalty",
                                     "frequency_penalty")

    def refuse_unsupported(self) -> None:
        """400 naming the first field that would change the answer and that aipc does not implement."""
        if self.n is not None and self.n > 1:
            raise ApiError(400, "n: aipc generates one choice per request (n must be 1)", param="n",
                           code="unsupported_value")
        if self.best_of is not None and self.best_of != 1:
            raise ApiError(400, "best_of: aipc generates one choice per request", param="best_of",
                           code="unsupported_value")
        for name in self.UNSUPPORTED:
            if not no_op(getattr(self, name)):
                raise ApiError(400, f"{name}: not supported by aipc", param=name, code="unsupported_parameter")

    def constraint(self):
        """The response_format as an :class:`aipc.constraints.Constraint` (None: free text)."""
        from ..constraints import Constraint

        form = self.response_format
        if form is None or form.type == "text":
            return None
        if form.type == "json_object":
            return Constraint.json()
        if form.json_schema is None:
            raise ApiError(400, "response_format: type json_schema needs a json_schema object",
                           param="response_format", code="invalid_value")
        schema = form.json_schema.schema_
        try:
            return Constraint.json() if schema is None else Constraint.json_schema(schema)
        except InvalidConfigError as error:
            raise ApiError(400, f"response_format: {error}", param="response_format", code="invalid_value") from None

    def settings(self) -> dict[str, Any]:
        """GenerationConfig fields; None is left to the runtime's default."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "repetition_penalty": self.repetition_penalty, "seed": self.seed, "stop": stop,
                "ignore_eos": self.ignore_eos, "constraint": self.constraint()}


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None  # at most one call per answer satisfies either value
    functions: Refused = None  # OpenAI's legacy function calling: refused, use tools
    function_call: Refused = None
    audio: Refused = None
    modalities: Annotated[Any, WithJsonSchema({"enum": [None, ["text"]]})] = None
    web_search_options: Refused = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = _Request.UNSUPPORTED + ("functions", "function_call", "audio",
                                                                     "web_search_options")

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if not no_op(self.modalities) and self.modalities != ["text"]:
            raise ApiError(400, "modalities: aipc answers text only", param="modalities", code="unsupported_value")
        for i, message in enumerate(self.messages):
            if message.content is None and not (message.role == "assistant" and message.tool_calls):
                raise ApiError(400, f"messages.{i}.content: a {message.role} message needs a content",
                               param=f"messages.{i}.content", code="invalid_value")
            if message.role == "tool" and not message.tool_call_id:
                raise ApiError(400, f"messages.{i}.tool_call_id: a tool message needs the id of the call it answers",
                               param=f"messages.{i}.tool_call_id", code="invalid_value")
        if self.tools is not None:
            if not self.tools:
                raise ApiError(400, "tools: the list is empty (leave it out instead)", param="tools",
                               code="invalid_value")
            from ..constraints import check_schema

            for i, tool in enumerate(self.tools):
                if tool.function.parameters is not None:
                    try:
                        check_schema(tool.function.parameters)
                    except InvalidConfigError as error:
                        where = f"tools.{i}.function.parameters"
                        raise ApiError(400, f"{where}: {error}", param=where, code="invalid_value") from None
        if isinstance(self.tool_choice, ToolChoice):
            names = [t.function.name for t in self.tools or ()]
            if self.tool_choice.function.name not in names:
                raise ApiError(400, f"tool_choice: no tool named {self.tool_choice.function.name!r} in tools",
                               param="tool_choice", code="invalid_value")
        elif self.tool_choice in ("auto", "required") and not self.tools:
            raise ApiError(400, f"tool_choice: {self.tool_choice!r} needs tools", param="tool_choice",
                           code="invalid_value")
        if self.tools and self.response_format is not None and self.response_format.type != "text" and \
                self.choice() != "none":
            raise ApiError(400, "response_format: cannot be combined with tools unless tool_choice is 'none'",
                           param="response_format", code="unsupported_value")

    def choice(self) -> str | None:
        """None (no tools), "none", "auto", "required" or the name of the function to call."""
        if not self.tools:
            return None
        if isinstance(self.tool_choice, ToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"

    def tool_list(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        if self.max_completion_tokens is not None:
            settings["max_new_tokens"] = self.max_completion_tokens
        return settings


class CompletionRequest(_Request):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]  # one prompt per request
    suffix: Refused = None
    echo: Refused = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = _Request.UNSUPPORTED + ("suffix", "echo")

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "prompt: send one prompt per request", param="prompt", code="invalid_value")
        return self.prompt[0]


# ---------------------------------------------------------------------------------- routes


def describe(hub: Hub, model_id: str) -> dict[str, Any]:
    """A model as ``/v1/models`` lists it; ``aipc`` says what it runs on (see ``ModelSlot.metadata``)."""
    slot = hub.slots[model_id]
    meta = slot.metadata()
    return {"id": model_id, "object": "model", "created": hub.created, "owned_by": "aipc",
            "context_length": meta["context_length"], "aipc": {"source": hub.ids[model_id], **meta}}


def register(app: FastAPI, hub: Hub) -> None:
    @app.get("/v1/models", **route("openai"))
    async def models():
        return {"object": "list", "data": [describe(hub, i) for i in hub.ids]}

    @app.get("/v1/models/{model_id:path}", **route("openai", 404))
    async def one_model(model_id: str):
        return describe(hub, hub.slot_for(model_id).id)

    @app.post("/v1/chat/completions", **route("openai", 404, 429, 500, 503, body=ChatRequest, streams=SSE))
    async def chat_completions(request: Request):
        body = await _parse(request, ChatRequest)
        body.refuse_unsupported()
        job = Job(asyncio.get_running_loop(), body.settings(), messages=[m.as_dict() for m in body.messages],
                  tools=body.tool_list(), choice=body.choice())
        return await _answer(request, hub.slot_for(body.model), job, body, chat=True)

    @app.post("/v1/completions", **route("openai", 404, 429, 500, 503, body=CompletionRequest, streams=SSE))
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        body.refuse_unsupported()
        job = Job(asyncio.get_running_loop(), body.settings(), prompt=body.text())
        return await _answer(request, hub.slot_for(body.model), job, body, chat=False)


async def _answer(request: Request, slot: ModelSlot, job: Job, body: _Request, chat: bool):
    event = await first_event(request, slot, job)  # errors before the first piece get a real status
    if body.stream and event[0] in ("piece", "call", "done"):
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(job, event, slot.id, chat, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Aipc-Backend": slot.header()})
    event, pieces, calls = await collect(request, job, event)
    if event[0] == "gone":
        return Response(status_code=499)  # nobody is listening any more
    if event[0] == "error":
        raise api_error(event[1], "messages" if chat else "prompt")
    usage, text = event[1], "".join(pieces)
    finish_reason = usage.finish_reason
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        tool_calls = []
        for call in calls:
            from ..tools import CallStream

            reader = CallStream()
            reader.feed("".join(call))
            reader.finish()
            if reader.arguments is None:  # cut by max_tokens: the text as it came, finish_reason "length"
                message["content"] = (text + "".join(call)) or None
                tool_calls = []
                break
            tool_calls.append({"id": _call_id(), "type": "function",
                               "function": {"name": reader.name, "arguments": reader.arguments}})
        if tool_calls:
            message = {"role": "assistant", "content": text or None, "tool_calls": tool_calls}
            finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
        choice = {"index": 0, "message": message}
    else:
        choice = {"index": 0, "text": text}
    answer = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
              "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
              "model": slot.id, "choices": [{**choice, "finish_reason": finish_reason, "logprobs": None}],
              "usage": _usage(usage)}
    return JSONResponse(answer, headers={"X-Aipc-Backend": slot.header()})


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _usage(usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.generated_tokens,
            "total_tokens": usage.prompt_tokens + usage.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


async def _sse(job: Job, first: tuple[str, Any], model_id: str, chat: bool, include_usage: bool):
    """Server-sent events; a tool call streams as OpenAI's deltas: ``tool_calls[{index, id, type,
    function: {name, arguments: ""}}]`` once the name is known, then ``{index, function: {arguments:
    FRAGMENT}}`` pieces."""
    from ..tools import CallStream

    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model_id}

    def chunk(text: str | None = None, finish_reason: str | None = None, role: bool = False,
              tool_call: dict[str, Any] | None = None) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            if tool_call is not None:
                delta = {"tool_calls": [tool_call]}
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        data = {**base, "choices": [{**choice, "finish_reason": finish_reason, "logprobs": None}]}
        if include_usage:
            data["usage"] = None
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    calls: list[CallStream] = []

    def call_chunks(events: list[tuple[str, str]]):
        index = len(calls) - 1
        for kind, value in events:
            if kind == "name":
                yield chunk(tool_call={"index": index, "id": _call_id(), "type": "function",
                                       "function": {"name": value, "arguments": ""}})
            else:
                yield chunk(tool_call={"index": index, "function": {"arguments": value}})

    try:
        if chat:
            yield chunk(role=True)
        event = first
        while event[0] in ("piece", "call"):
            if event[0] == "call":
                if calls:
                    for line in call_chunks(calls[-1].finish()):
                        yield line
                calls.append(CallStream())
            elif calls:
                for line in call_chunks(calls[-1].feed(event[1])):
                    yield line
            else:
                yield chunk(event[1])
            event = await job.events.get()  # a disconnect cancels this generator (and so the job)
        if event[0] == "error":
            yield f"data: {json.dumps(api_error(event[1]).body())}\n\n"
        if event[0] != "done":
            return
        usage = event[1]
        if calls:
            for line in call_chunks(calls[-1].finish()):
                yield line
        finish_reason = usage.finish_reason
        if calls and finish_reason == "stop" and all(c.arguments is not None for c in calls):
            finish_reason = "tool_calls"
        yield chunk(finish_reason=finish_reason)
        if include_usage:
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(usage)})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a no-op when the job is done; stops the generation when the client left
