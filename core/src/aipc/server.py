"""``aipc serve``: an OpenAI-compatible HTTP server over any backend (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streaming with
server-sent events or not), ``GET /v1/models[/ID]`` and ``GET /health`` (per model: loaded,
running, waiting, loads, completed, cancelled, failed, rejected, the last finish_reason,
completion and cached token counts).
Request fields beyond OpenAI's: ``top_k``, ``repetition_penalty`` and ``ignore_eos`` (as vLLM);
other unknown fields are ignored, known ones are type-checked strictly. Fields that would change
the answer are implemented or refused with a 400 naming them (``n`` > 1, ``logprobs``,
``logit_bias``, penalties, legacy ``functions``, ...): never silently dropped.

Structured output and tools (``aipc.tools`` has the formats): ``response_format`` (``text``,
``json_object``, ``json_schema``) becomes the generation's :class:`aipc.constraints.Constraint`;
``tools`` with ``tool_choice`` answer ``message.tool_calls`` (streamed as OpenAI's tool-call
deltas); see :meth:`ModelSlot._chat` for how each ``tool_choice`` is generated.

How it works:

- Every ``--model`` gets a :class:`ModelSlot`: one worker thread that loads the model on the
  first request (quantizing it into the cache if needed, so exactly once), then runs that
  model's requests one at a time from an unbounded FIFO whose length the slot bounds itself
  (``--max-queue`` waiting + 1 running; past it: 429 with Retry-After). A model idle for
  ``--keep-alive`` seconds is unloaded (negative: never, 0: right after each request).
- The worker hands text pieces to the request's event loop; the HTTP side only awaits them.
  A client that goes away (streaming or not) sets the job's cancel flag; the worker then
  closes the generation iterator, which stops the backend (finish_reason ``cancelled`` in the
  log and in ``/health``).
- Prefix reuse: each model keeps the KV state of its ``--cache-slots`` most recent
  conversations (if its backend has a prefix cache), so a client resending a growing history
  has only the new part prefilled, with no session id; ``usage.prompt_tokens_details.cached_tokens``
  says how many prompt tokens were reused. Requests of a model run one at a time, so the slots are
  never shared by two generations at once; a cancelled generation leaves its slot usable.
- Backend, precision, device and ``-o`` options are server-wide (the CLI's); a client names
  a model by its id in ``/v1/models``: the ``--model`` text itself, or a path's last part.
- Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``: 400 for
  malformed JSON, wrongly typed fields and invalid values, 401 for a missing or wrong key
  (every path, /health too, when ``--api-key`` is set), 404 for an unknown model, 413 for a
  body over 2 MiB, 429 when a queue is full, 503 for requests still open at Ctrl-C.

This module imports FastAPI: only the ``serve`` command imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .errors import AipcError, HubUnavailableError, InvalidConfigError, ModelNotFoundError, PromptTooLongError

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one: our lines appear beside its own

MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_TOKENS = 4096  # when the request names none and the model's context is unknown
_load_lock = threading.Lock()  # one load/quantization at a time in the process (they share the cores)


# ---------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered to the client as an OpenAI-style error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


STOPPING = ApiError(503, "the server is stopping", "server_error", code="server_stopping")


def api_error(error: BaseException, prompt_param: str = "messages") -> ApiError:
    """The HTTP answer for an exception raised while loading or generating."""
    if isinstance(error, ApiError):
        return error
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, PromptTooLongError):
        return ApiError(400, message, param=prompt_param, code="context_length_exceeded")
    if isinstance(error, InvalidConfigError):
        return ApiError(400, message, code="invalid_value")
    if isinstance(error, ModelNotFoundError):
        return ApiError(404, message, param="model", code="model_not_found")
    if isinstance(error, HubUnavailableError):
        return ApiError(503, message, "server_error", code="model_unavailable")
    if isinstance(error, AipcError):  # the server's backend/precision/device cannot serve the model
        return ApiError(500, message, "server_error", code=type(error).__name__)
    return ApiError(500, "internal server error (see the server log)", "server_error")


# ---------------------------------------------------------------------------------- requests


class _Strict(BaseModel):
    # strict: "5" is not a number and "true" is not a boolean; unknown fields are ignored
    model_config = ConfigDict(strict=True, extra="ignore")


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


class Message(_Strict):
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


def _off(value: Any) -> bool:
    """Whether a field that would change the answer is absent or at its no-op value."""
    return value is None or value is False or value == 0 or value == {} or value == []


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
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # fields aipc does not implement: refused (400 naming the field) unless absent or at their no-op value
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    best_of: Any = None

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
            if not _off(getattr(self, name)):
                raise ApiError(400, f"{name}: not supported by aipc", param=name, code="unsupported_parameter")

    def constraint(self):
        """The response_format as an :class:`aipc.constraints.Constraint` (None: free text)."""
        from .constraints import Constraint

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
    functions: Any = None  # OpenAI's legacy function calling: refused, use tools
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    web_search_options: Any = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = _Request.UNSUPPORTED + ("functions", "function_call", "audio",
                                                                     "web_search_options")

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.modalities is not None and list(self.modalities) != ["text"]:
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
            from .constraints import check_schema

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
    prompt: str | list[str]
    suffix: Any = None
    echo: Any = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = _Request.UNSUPPORTED + ("suffix", "echo")

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "prompt: send one prompt per request", param="prompt", code="invalid_value")
        return self.prompt[0]


# ---------------------------------------------------------------------------------- model slots


@dataclass
class Job:
    """One request's generation: its input, its cancel flag and the events sent back to it."""

    loop: asyncio.AbstractEventLoop
    settings: dict[str, Any]
    messages: list[dict[str, Any]] | None = None  # chat ...
    prompt: str | None = None  # ... or a raw completion prompt
    tools: list[dict[str, Any]] | None = None  # OpenAI's tool objects
    choice: str | None = None  # tool_choice: None (no tools), "none", "auto", "required" or a function name
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def emit(self, kind: str, value: Any = None) -> None:
        """From the worker thread: ("piece", text), ("call",) (the pieces after it are one tool call's
        envelope, see aipc.tools), ("done", usage) or ("error", exception)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (shutdown)
            self.cancelled.set()


class ModelSlot:
    """A served model: loaded on demand, its requests run one at a time by a worker thread."""

    def __init__(self, model_id: str, name: str, load_kwargs: dict[str, Any], keep_alive: float, max_queue: int):
        self.id, self.name, self.load_kwargs = model_id, name, load_kwargs
        self.keep_alive, self.max_queue = keep_alive, max_queue
        self.model = None
        self.stopping = False
        self.current: Job | None = None
        self.pending = 0  # running + waiting
        self.lock = threading.Lock()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stats: dict[str, Any] = {"loads": 0, "completed": 0, "cancelled": 0, "failed": 0, "rejected": 0,
                                      "last_finish_reason": None, "last_completion_tokens": None,
                                      "last_cached_tokens": None}
        self.durations: list[float] = []  # of recent requests, for Retry-After
        self.thread = threading.Thread(target=self._work, name=f"aipc-serve-{model_id}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.pending > self.max_queue:
                self.stats["rejected"] += 1
                retry = self.retry_after()
                raise ApiError(429, f"model {self.id!r} is busy: {self.pending - 1} request(s) already waiting; "
                               f"retry in {retry} s", "rate_limit_error", code="queue_full",
                               headers={"Retry-After": str(retry)})
            self.pending += 1
        self.jobs.put(job)

    def retry_after(self) -> int:
        typical = sorted(self.durations)[len(self.durations) // 2] if self.durations else 1.0
        return max(1, math.ceil(typical * self.pending))

    def status(self) -> dict[str, Any]:
        return {"loaded": self.model is not None, "running": self.current is not None,
                "waiting": max(self.pending - (self.current is not None), 0), **self.stats}

    def stop(self) -> None:
        """Cancel the running and waiting requests, unload, end the thread."""
        self.stopping = True
        job = self.current
        if job:
            job.cancelled.set()
        self.jobs.put(None)

    # -- in the worker thread

    def _work(self) -> None:
        while True:
            idle = self.keep_alive if self.model is not None and self.keep_alive >= 0 else None
            try:
                job = self.jobs.get(timeout=idle)
            except queue.Empty:
                self._unload(f"idle for {self.keep_alive:g} s")
                continue
            if job is None:
                break
            self.current = job
            try:
                self._run(job)
            finally:
                self.current = None
                with self.lock:
                    self.pending -= 1
        self._unload("server stopping")

    def _run(self, job: Job) -> None:
        started = time.perf_counter()
        if self.stopping or job.cancelled.is_set():  # the server stops, or the client left while waiting
            self.stats["cancelled"] += 1
            job.emit(*(("error", STOPPING) if self.stopping else ("gone",)))
            return
        try:
            model = self._loaded()
            settings = dict(job.settings)
            if settings.get("max_new_tokens") is None:  # up to the end of the context, like Ollama
                settings["max_new_tokens"] = model.context_length or DEFAULT_MAX_TOKENS
            if job.messages is None:
                self._generate(job, model, job.prompt, settings)
            else:
                self._chat(job, model, settings)
        except Exception as error:
            if isinstance(error, InvalidConfigError) and "constrain" in str(error):  # names the request field
                field_ = "tools" if job.choice not in (None, "none") else "response_format"
                error = ApiError(400, f"{field_}: {str(error).strip().splitlines()[0]}", param=field_,
                                 code="unsupported_value" if "cannot constrain" in str(error) else "invalid_value")
            self.stats["failed"] += 1
            if isinstance(error, (AipcError, ApiError)):
                log.warning("%s: %s", self.id, error)
            else:
                log.exception("%s: generation failed", self.id)
            job.emit("error", error)
            return
        usage = model.usage
        if job.cancelled.is_set():
            usage.finish_reason = "cancelled"
        self.stats["cancelled" if usage.finish_reason == "cancelled" else "completed"] += 1
        self.stats["last_finish_reason"] = usage.finish_reason
        self.stats["last_completion_tokens"] = usage.generated_tokens
        self.stats["last_cached_tokens"] = usage.cached_tokens
        self.durations = (self.durations + [time.perf_counter() - started])[-20:]
        log.info("%s: finish_reason=%s prompt_tokens=%d cached_tokens=%d completion_tokens=%d ttft=%.3fs "
                 "decode=%.1f tok/s", self.id, usage.finish_reason, usage.prompt_tokens, usage.cached_tokens,
                 usage.generated_tokens, usage.time_to_first_token_s, usage.decode_tokens_per_s)
        job.emit(*(("error", STOPPING) if self.stopping else ("done", usage)))

    @staticmethod
    def _generate(job: Job, model, prompt: str, settings: dict[str, Any], emit: bool = True,
                  call: bool = False) -> str:
        """Run one generation, emitting its pieces (after a "call" event if ``call``: not before the
        first piece, so that errors still get their HTTP status); the text generated."""
        pieces = model.generate(prompt, raw=True, **settings)
        text = []
        try:
            for piece in pieces:
                if job.cancelled.is_set():
                    break
                if call and not text:
                    job.emit("call")
                text.append(piece)
                if emit:
                    job.emit("piece", piece)
        finally:
            pieces.close()  # stops the backend when we left early
        return "".join(text)

    def _chat(self, job: Job, model, settings: dict[str, Any]) -> None:
        """A chat turn, with tools as ``job.choice`` says:

        - no tools or ``none``: plain text (tools not shown to the model; tool turns of the
          history still rendered);
        - ``required`` or a function's name: one call, generated under the envelope's JSON schema
          (``aipc.tools.call_schema``) right after the format's opening tag;
        - ``auto`` in the model's own format: free text, then its tool-call tags are parsed;
        - ``auto`` in the generic format: first a generation constrained (GBNF) to "text, or the
          opening tag"; when it is the tag, the call as for ``required``. A backend without grammar
          constraints gets free text, then parsing (as the model's own format).
        """
        from . import tools

        shown = job.tools if job.choice not in (None, "none") else None
        prompt, fmt = tools.render(model, job.messages, shown)
        kinds = model.capabilities.constraints
        if job.choice in (None, "none"):
            self._generate(job, model, prompt, settings)
            return
        if job.choice != "auto":  # required, or a named function
            if "json_schema" not in kinds:
                raise ApiError(400, f"tool_choice: backend {model.backend!r} cannot constrain output to a JSON "
                               "schema; use tool_choice 'auto'", param="tool_choice", code="unsupported_value")
            name = None if job.choice == "required" else job.choice
            self._generate(job, model, prompt + fmt.open,
                           {**settings, "constraint": tools.call_constraint(job.tools, name)}, call=True)
            return
        if fmt.native or "grammar" not in kinds or "json_schema" not in kinds:
            text = self._generate(job, model, prompt, settings, emit=False)
            outside, calls = tools.parse_native(text, fmt)
            if outside:
                job.emit("piece", outside)
            for call in calls:
                job.emit("call")
                job.emit("piece", call)
            return
        from .constraints import Constraint

        first = model.generate(prompt, raw=True, **{**settings, "constraint": Constraint("grammar", tools.AUTO_GRAMMAR)})
        text, deciding = [], True
        try:
            for piece in first:
                if job.cancelled.is_set():
                    break
                text.append(piece)
                if deciding and "".join(text).strip():
                    deciding = "".join(text).lstrip().startswith("<")
                    if not deciding:
                        job.emit("piece", "".join(text))
                elif not deciding:
                    job.emit("piece", piece)
        finally:
            first.close()
        said = "".join(text)
        if not said.strip().startswith(fmt.open) or job.cancelled.is_set() or model.usage.finish_reason == "length":
            if deciding and said:
                job.emit("piece", said)
            return
        before = model.usage
        left = settings["max_new_tokens"] - before.generated_tokens
        self._generate(job, model, prompt + said.strip(), {**settings, "max_new_tokens": max(left, 1),
                                                            "constraint": tools.call_constraint(job.tools)}, call=True)
        import dataclasses

        model.usage = dataclasses.replace(model.usage, prompt_tokens=before.prompt_tokens,
                                          cached_tokens=before.cached_tokens,
                                          generated_tokens=before.generated_tokens + model.usage.generated_tokens)

    def _loaded(self):
        if self.model is None:
            from .runtime import load

            said: list[str] = []

            def progress(message: str, fraction: float | None = None) -> None:
                if not said or said[-1] != message:
                    said.append(message)
                    log.info("%s: %s", self.id, message)

            with _load_lock:
                self.model = load(self.name, progress=progress, **self.load_kwargs)
            self.stats["loads"] += 1
            log.info("%s: loaded %r in %.1f s", self.id, self.model, self.model.load_s)
        return self.model

    def _unload(self, why: str) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None
            log.info("%s: unloaded (%s)", self.id, why)


# ---------------------------------------------------------------------------------- HTTP


class Guard:
    """ASGI middleware: the API key (401) and the body size limit (413), before anything else."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            error = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await error.response()(scope, receive, send)
        too_big = ApiError(413, f"the request body is larger than {self.max_body} bytes", code="request_too_large")
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            return await too_big.response()(scope, receive, send)
        body, more = bytearray(), scope["method"] in ("POST", "PUT", "PATCH")
        while more:  # read it all here: a chunked body has no Content-Length to check
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return await too_big.response()(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _model_ids(names: tuple[str, ...]) -> dict[str, str]:
    """Model id -> the name given to ``aipc.load``. A path is served under its last part."""
    ids: dict[str, str] = {}
    for name in names:
        is_path = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
        model_id = Path(name).name if is_path else name
        if model_id in ids:
            raise InvalidConfigError(f"two --model values share the id {model_id!r}")
        ids[model_id] = name
    return ids


def create_app(model_names: tuple[str, ...], load_kwargs: dict[str, Any], api_key: str | None = None,
               keep_alive: float = 300.0, max_queue: int = 8, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    from .sources import DEFAULT_MODEL

    ids = _model_ids(tuple(model_names) or (DEFAULT_MODEL,))
    aliases = {**{name: i for i, name in ids.items()}, **{i: i for i in ids}}  # the id or the --model text
    slots: dict[str, ModelSlot] = {}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for model_id, name in ids.items():
            slots[model_id] = ModelSlot(model_id, name, load_kwargs, keep_alive, max_queue)
        yield
        for slot in slots.values():
            slot.stop()
        for slot in slots.values():
            await asyncio.to_thread(slot.thread.join, 10)

    app = FastAPI(title="aipc", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.slots = slots
    app.add_middleware(Guard, api_key=api_key, max_body=max_body_bytes)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            return ApiError(400, "the request body is not valid JSON", code="invalid_json").response()
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return ApiError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return ApiError(error.status_code, str(error.detail), code=code).response()

    @app.exception_handler(Exception)
    async def on_crash(request: Request, error: Exception):
        log.exception("unexpected error")
        return api_error(error).response()

    def slot_for(model: str) -> ModelSlot:
        if model not in aliases:
            raise ApiError(404, f"the model {model!r} is not served here (served: {', '.join(ids)})",
                           param="model", code="model_not_found")
        return slots[aliases[model]]

    @app.get("/health")
    async def health():
        return {"status": "ok", "version": __version__, "models": {i: s.status() for i, s in slots.items()}}

    def describe(model_id: str) -> dict[str, Any]:
        settings = {k: load_kwargs.get(k) for k in ("backend", "precision", "device")}  # None: the default
        return {"id": model_id, "object": "model", "created": created, "owned_by": "aipc",
                "aipc": {"source": ids[model_id], "loaded": slots[model_id].model is not None, **settings}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [describe(i) for i in ids]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str):
        return describe(slot_for(model_id).id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, ChatRequest)
        body.refuse_unsupported()
        job = Job(asyncio.get_running_loop(), body.settings(), messages=[m.as_dict() for m in body.messages],
                  tools=body.tool_list(), choice=body.choice())
        return await _answer(request, slot_for(body.model), job, body, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        body.refuse_unsupported()
        job = Job(asyncio.get_running_loop(), body.settings(), prompt=body.text())
        return await _answer(request, slot_for(body.model), job, body, chat=False)

    return app


async def _parse(request: Request, model: type[_Request]) -> Any:
    """The JSON body as ``model`` (whatever the Content-Type: curl users forget it)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


async def _watch(request: Request, job: Job) -> None:
    """Until cancelled: notice the client leaving, and stop the job then."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancelled.set()
    job.events.put_nowait(("gone", None))


async def _answer(request: Request, slot: ModelSlot, job: Job, body: _Request, chat: bool):
    slot.submit(job)
    watcher = asyncio.create_task(_watch(request, job))
    try:
        event = await job.events.get()  # errors before the first piece get a real status
        if body.stream and event[0] in ("piece", "call", "done"):
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            watcher.cancel()  # StreamingResponse watches for the disconnect itself
            return StreamingResponse(_sse(job, event, slot.id, chat, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        pieces: list[str] = []
        calls: list[list[str]] = []
        while event[0] in ("piece", "call"):
            if event[0] == "call":
                calls.append([])
            else:
                (calls[-1] if calls else pieces).append(event[1])
            event = await job.events.get()
    except BaseException:
        job.cancelled.set()
        raise
    finally:
        watcher.cancel()
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
            from .tools import CallStream

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
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": slot.id, "choices": [{**choice, "finish_reason": finish_reason, "logprobs": None}],
            "usage": _usage(usage)}


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
    from .tools import CallStream

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


# ---------------------------------------------------------------------------------- entry point


def serve(host: str = "127.0.0.1", port: int = 8000, model_names: tuple[str, ...] = (), backend: str | None = None,
          precision: str | None = None, device: str | None = None, options: tuple[str, ...] = (),
          trust_remote_code: bool = False, api_key: str | None = None, keep_alive: float = 300.0,
          max_queue: int = 8, max_body_bytes: int = MAX_BODY_BYTES, cache_slots: int = 4) -> None:
    """Run the server until Ctrl-C. Bad settings raise :class:`aipc.errors.AipcError` before it starts."""
    import uvicorn

    from .plugins import registry
    from .runtime import choose, parse_options

    if cache_slots < 0:
        raise InvalidConfigError(f"--cache-slots must be a whole number >= 0, got {cache_slots}")
    if max_queue < 0:
        raise InvalidConfigError(f"--max-queue must be >= 0, got {max_queue}")
    if backend or precision or device:  # fail now, not on the first request
        choose(registry(), backend, precision, device, need_present=True)
    load_kwargs = {"backend": backend, "precision": precision, "device": device, "options": parse_options(options),
                   "trust_remote_code": trust_remote_code, "cache_slots": cache_slots}
    app = create_app(tuple(model_names), load_kwargs, api_key=api_key or None, keep_alive=keep_alive,
                     max_queue=max_queue, max_body_bytes=max_body_bytes)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use it", host)
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # Ctrl-C: answer every open request now (503), then stop
            for slot in app.state.slots.values():
                slot.stop()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        server.run()
    if not server.started:  # e.g. the port is taken: uvicorn said why
        raise SystemExit(1)
