"""``aipc serve``: an OpenAI-compatible HTTP server over any backend (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streaming with
server-sent events or not), ``GET /v1/models[/ID]`` and ``GET /health`` (per model: loaded,
running, waiting, loads, completed, cancelled, failed, rejected, the last finish_reason,
completion and cached token counts).
Request fields beyond OpenAI's: ``top_k``, ``repetition_penalty`` and ``ignore_eos`` (as vLLM);
other unknown fields are ignored, known ones are type-checked strictly.

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
from typing import Any, Literal

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


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


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
    n: int | None = Field(None, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def settings(self) -> dict[str, Any]:
        """GenerationConfig fields; None is left to the runtime's default."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "repetition_penalty": self.repetition_penalty, "seed": self.seed, "stop": stop,
                "ignore_eos": self.ignore_eos}


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        if self.max_completion_tokens is not None:
            settings["max_new_tokens"] = self.max_completion_tokens
        return settings


class CompletionRequest(_Request):
    prompt: str | list[str]

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
    messages: list[dict[str, str]] | None = None  # chat ...
    prompt: str | None = None  # ... or a raw completion prompt
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def emit(self, kind: str, value: Any = None) -> None:
        """From the worker thread: ("piece", text), ("done", usage) or ("error", exception)."""
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
            if job.messages is not None:
                pieces = model.chat(job.messages, **settings)
            else:
                pieces = model.generate(job.prompt, raw=True, **settings)
            try:
                for piece in pieces:
                    if job.cancelled.is_set():
                        break
                    job.emit("piece", piece)
            finally:
                pieces.close()  # stops the backend when we left early
        except Exception as error:
            self.stats["failed"] += 1
            if isinstance(error, AipcError):
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
        job = Job(asyncio.get_running_loop(), body.settings(), messages=[m.as_dict() for m in body.messages])
        return await _answer(request, slot_for(body.model), job, body, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
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
        if body.stream and event[0] in ("piece", "done"):
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            watcher.cancel()  # StreamingResponse watches for the disconnect itself
            return StreamingResponse(_sse(job, event, slot.id, chat, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        pieces = []
        while event[0] == "piece":
            pieces.append(event[1])
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
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat else
              {"index": 0, "text": text})
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": slot.id, "choices": [{**choice, "finish_reason": usage.finish_reason, "logprobs": None}],
            "usage": _usage(usage)}


def _usage(usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.generated_tokens,
            "total_tokens": usage.prompt_tokens + usage.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


async def _sse(job: Job, first: tuple[str, Any], model_id: str, chat: bool, include_usage: bool):
    base = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model_id}

    def chunk(text: str | None = None, finish_reason: str | None = None, role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        data = {**base, "choices": [{**choice, "finish_reason": finish_reason, "logprobs": None}]}
        if include_usage:
            data["usage"] = None
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        if chat:
            yield chunk(role=True)
        event = first
        while event[0] == "piece":
            yield chunk(event[1])
            event = await job.events.get()  # a disconnect cancels this generator (and so the job)
        if event[0] == "error":
            yield f"data: {json.dumps(api_error(event[1]).body())}\n\n"
        if event[0] != "done":
            return
        usage = event[1]
        yield chunk(finish_reason=usage.finish_reason)
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
