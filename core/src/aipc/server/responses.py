"""OpenAI's Responses API, stateless: ``POST /v1/responses``.

- ``input``: a string, or a list of messages (``{"role", "content"}`` with an optional
  ``"type": "message"``; ``content`` a string or ``input_text`` / ``output_text`` parts);
  ``instructions`` (a system message before them), ``max_output_tokens``, ``temperature``,
  ``top_p``, ``text.format`` (``text``, ``json_object``, ``json_schema``), ``stream``; and, as on
  the chat API, aipc's ``top_k``, ``seed``, ``ignore_eos``.
- Streamed as server-sent events with their types: ``response.created``, ``response.in_progress``,
  ``response.output_item.added``, ``response.content_part.added``, ``response.output_text.delta``...,
  ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``,
  then ``response.completed`` (or ``response.incomplete`` when the token limit cut the answer,
  ``incomplete_details.reason: "max_output_tokens"``; an error after the start is an ``error`` event).
- Stateless: nothing is stored, so every answer says ``"store": false`` (``store: true`` is
  accepted, and nothing kept); ``previous_response_id`` and ``conversation`` are refused with 400
  naming them, as are ``background``, ``tools``, ``reasoning``, ``include``, ``prompt``,
  ``truncation: "auto"``, ``top_logprobs`` and input items other than messages (images, files,
  function calls and their outputs).
- Errors are OpenAI's error objects, as on the chat API (429 when the model's queue is full).
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
from .common import ApiError, Hub, Job, ModelSlot, api_error, collect, first_event, parse
from .schema import Body as _Strict, Refused, no_op, route




class InputPart(_Strict):
    type: str
    text: str | None = None


class InputMessage(_Strict):
    type: str = "message"
    role: str | None = None
    content: str | list[InputPart] | None = None


class TextFormat(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextOptions(_Strict):
    format: TextFormat | None = None
    verbosity: Any = None


class ResponsesRequest(_Strict):
    model: str
    input: str | list[InputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # aipc's (as on the chat API)
    seed: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    text: TextOptions | None = None
    previous_response_id: Refused = None
    conversation: Refused = None
    background: Refused = None
    tools: Refused = None
    tool_choice: Annotated[Any, WithJsonSchema({"enum": [None, "none", "auto"]})] = None  # no tools here
    reasoning: Refused = None
    include: Refused = None
    prompt: Refused = None
    truncation: Annotated[Literal["auto", "disabled"] | None, WithJsonSchema({"enum": [None, "disabled"]})] = None
    top_logprobs: Refused = None

    REFUSED: ClassVar[dict[str, str]] = {"previous_response_id": "aipc's Responses API is stateless: send the whole conversation as input",
               "conversation": "aipc's Responses API is stateless: send the whole conversation as input",
               "background": "aipc answers in the foreground only", "tools": "not supported on /v1/responses "
               "(use /v1/chat/completions for tools)", "reasoning": "aipc does not separate reasoning",
               "include": "nothing extra can be included", "prompt": "stored prompts do not exist here",
               "top_logprobs": "not supported by aipc"}

    def refuse(self) -> None:
        for name, why in self.REFUSED.items():
            value = getattr(self, name)
            if not no_op(value):
                raise ApiError(400, f"{name}: {why}", param=name, code="unsupported_parameter")
        if self.tool_choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice: no tools on /v1/responses", param="tool_choice",
                           code="unsupported_parameter")
        if self.truncation == "auto":
            raise ApiError(400, "truncation: aipc does not drop input ('disabled' only); a prompt over the "
                           "context is refused", param="truncation", code="unsupported_value")

    def messages(self) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            if not self.input:
                raise ApiError(400, "input: empty", param="input", code="invalid_value")
            return messages + [{"role": "user", "content": self.input}]
        if not self.input:
            raise ApiError(400, "input: the list is empty", param="input", code="invalid_value")
        for i, item in enumerate(self.input):
            where = f"input.{i}"
            if item.type != "message":
                raise ApiError(400, f"{where}.type: only message items are supported (not {item.type!r})",
                               param=f"{where}.type", code="unsupported_value")
            if item.role not in ("system", "developer", "user", "assistant"):
                raise ApiError(400, f"{where}.role: must be system, developer, user or assistant", param=f"{where}.role",
                               code="invalid_value")
            if item.content is None:
                raise ApiError(400, f"{where}.content: required", param=f"{where}.content", code="invalid_value")
            if isinstance(item.content, str):
                text = item.content
            else:
                for j, part in enumerate(item.content):
                    if part.type not in ("input_text", "output_text", "text") or part.text is None:
                        raise ApiError(400, f"{where}.content.{j}.type: only text parts are supported "
                                       f"(not {part.type!r})", param=f"{where}.content.{j}.type",
                                       code="unsupported_value")
                text = "".join(p.text or "" for p in item.content)
            messages.append({"role": "system" if item.role == "developer" else item.role, "content": text})
        return messages

    def constraint(self):
        from ..constraints import Constraint

        form = self.text.format if self.text else None
        if form is None or form.type == "text":
            return None
        if form.type == "json_object":
            return Constraint.json()
        try:
            return Constraint.json() if form.schema_ is None else Constraint.json_schema(form.schema_)
        except InvalidConfigError as error:
            raise ApiError(400, f"text.format: {error}", param="text.format", code="invalid_value") from None

    def settings(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_output_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "seed": self.seed, "ignore_eos": self.ignore_eos,
                "constraint": self.constraint()}


def _text_format(body: ResponsesRequest) -> dict[str, Any]:
    form = body.text.format if body.text else None
    if form is None:
        return {"type": "text"}
    out: dict[str, Any] = {"type": form.type}
    if form.type == "json_schema":
        out.update(name=form.name, schema=form.schema_, strict=form.strict)
    return out


class _Answer:
    """The response object as it grows."""

    def __init__(self, body: ResponsesRequest, slot: ModelSlot) -> None:
        self.body, self.slot = body, slot
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())

    def message(self, text: str, done: bool) -> dict[str, Any]:
        content = [self.part(text)] if done else []
        return {"type": "message", "id": self.item_id, "status": "completed" if done else "in_progress",
                "role": "assistant", "content": content}

    @staticmethod
    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def response(self, status: str, text: str | None = None, usage=None) -> dict[str, Any]:
        body = self.body
        incomplete = status == "incomplete"
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "background": False, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                "model": self.slot.id, "output": [] if text is None else [self.message(text, True)],
                "parallel_tool_calls": False, "previous_response_id": None, "reasoning": None,
                "store": False, "temperature": body.temperature, "text": {"format": _text_format(body)},
                "tool_choice": "none", "tools": [], "top_p": body.top_p, "truncation": "disabled",
                "metadata": body.metadata or {}, "usage": None if usage is None else _usage(usage)}


def _usage(usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.generated_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.generated_tokens}


def _status(usage) -> str:
    return "incomplete" if usage.finish_reason == "length" else "completed"


def register(app: FastAPI, hub: Hub) -> None:
    @app.post("/v1/responses", **route("openai", 404, 429, 500, 503, body=ResponsesRequest,
                                       streams="text/event-stream"))
    async def responses(request: Request):
        body = await parse(request, ResponsesRequest)
        body.refuse()
        slot = hub.slot_for(body.model)
        job = Job(asyncio.get_running_loop(), body.settings(), messages=body.messages(), format_param="text.format")
        answer = _Answer(body, slot)
        event = await first_event(request, slot, job)
        headers = {"X-Aipc-Backend": slot.header()}
        if event[0] == "error":
            raise api_error(event[1], "input")
        if event[0] == "gone":
            return Response(status_code=499)
        if body.stream:
            return StreamingResponse(_events(job, event, answer), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", **headers})
        end, pieces, _calls = await collect(request, job, event)
        if end[0] == "gone":
            return Response(status_code=499)
        if end[0] == "error":
            raise api_error(end[1], "input")
        usage = end[1]
        return JSONResponse(answer.response(_status(usage), "".join(pieces), usage), headers=headers)


async def _events(job: Job, first: tuple[str, Any], answer: _Answer):
    sequence = 0

    def sse(kind: str, **data: Any) -> str:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **data}
        sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    where = {"item_id": answer.item_id, "output_index": 0, "content_index": 0}
    try:
        yield sse("response.created", response=answer.response("in_progress"))
        yield sse("response.in_progress", response=answer.response("in_progress"))
        yield sse("response.output_item.added", output_index=0, item=answer.message("", False))
        yield sse("response.content_part.added", **where, part=answer.part(""))
        pieces: list[str] = []
        event = first
        while event[0] == "piece":
            pieces.append(event[1])
            yield sse("response.output_text.delta", **where, delta=event[1], logprobs=[])
            event = await job.events.get()  # a disconnect cancels this generator (and so the job)
        if event[0] == "error":
            error = api_error(event[1], "input")
            yield sse("error", code=error.code, message=error.message, param=error.param)
            return
        if event[0] != "done":
            return
        usage, text = event[1], "".join(pieces)
        yield sse("response.output_text.done", **where, text=text, logprobs=[])
        yield sse("response.content_part.done", **where, part=answer.part(text))
        yield sse("response.output_item.done", output_index=0, item=answer.message(text, True))
        status = _status(usage)
        yield sse(f"response.{status}", response=answer.response(status, text, usage))
    finally:
        job.cancelled.set()  # a no-op when the job is done; stops the generation when the client left
