"""The part of ``aipc serve`` every API dialect shares: model slots (one worker thread and one
bounded FIFO per served model), jobs and their cancellation, errors, the API key and body guard.

The dialect modules (:mod:`.openai`, :mod:`.responses`, :mod:`.ollama`) turn requests into
:class:`Job` objects, submit them to a :class:`ModelSlot` and turn the job's events into their own
answer shapes. An :class:`ApiError` is rendered in the shape of the API its path belongs to
(:func:`dialect_of`): OpenAI's error object, or Ollama's ``{"error": "..."}`` (where a full queue is
503, Ollama's convention, instead of 429).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from ..errors import AipcError, HubUnavailableError, InvalidConfigError, ModelNotFoundError, PromptTooLongError

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one: our lines appear beside its own

MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_TOKENS = 4096  # when the request names none and the model's context is unknown
_load_lock = threading.Lock()  # one load/quantization at a time in the process (they share the cores)


def dialect_of(path: str) -> str:
    """Which API a request path belongs to: "ollama" (``/api/...``) or "openai" (everything else)."""
    return "ollama" if path == "/api" or path.startswith("/api/") else "openai"


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

    def response(self, dialect: str = "openai") -> JSONResponse:
        if dialect == "ollama":  # Ollama's shape; its full queue is 503 ("server busy")
            status = 503 if self.status == 429 else self.status
            return JSONResponse({"error": self.message}, status_code=status, headers=self.headers)
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
    format_param: str = "response_format"  # the request field that asked for the constraint (errors name it)
    keep_alive: float | None = None  # seconds to keep the model loaded after this job (None: the server's)
    load_only: bool = False  # load the model (or unload it, keep_alive 0) and generate nothing (Ollama)
    delete: bool = False  # unload the model and remove its artifact from the cache (Ollama's /api/delete)
    context_cap: int | None = None  # generate at most up to this many tokens of context (Ollama's num_ctx)
    load_s: float = 0.0  # set by the worker: the time this job spent loading the model
    created: float = field(default_factory=time.perf_counter)
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
        self.idle_for = keep_alive  # the keep_alive of the last request (Ollama's keep_alive sets it)
        self.expires_at: float | None = None  # wall-clock time of the next idle unload (None: never)
        self.known: dict[str, Any] = {}  # backend, device, precision, context: what the last load found
        self.model = None
        self.artifact: Path | None = None  # the artifact folder the last load used
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
        if self.stopping:
            raise STOPPING
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

    def metadata(self) -> dict[str, Any]:
        """What this model runs on: measured once loaded (kept after an unload), else the server's
        settings (None: the default, chosen at load). ``context_length`` is the most the model accepts
        (prompt + answer); ``max_prompt_tokens`` a backend's own prompt cap (e.g. the NPU's)."""
        model = self.model
        if model is not None:
            return self._measure(model)
        if self.known:
            return {**self.known, "loaded": False}
        return {"backend": self.load_kwargs.get("backend"), "device": self.load_kwargs.get("device"),
                "precision": self.load_kwargs.get("precision"), "context_length": None, "max_prompt_tokens": None,
                "loaded": False}

    def _measure(self, model) -> dict[str, Any]:
        self.known = {"backend": model.backend, "device": model.device, "precision": model.precision,
                      "context_length": model.context_length,
                      "max_prompt_tokens": model.capabilities.max_prompt_tokens or None}
        return {**self.known, "loaded": True}

    def header(self) -> str:
        """``backend/device/precision`` for the X-Aipc-Backend response header ("?" where unknown)."""
        meta = self.metadata()
        return "/".join(str(meta[k] or "?") for k in ("backend", "device", "precision"))

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
            idle = self.idle_for if self.model is not None and self.idle_for >= 0 else None
            self.expires_at = time.time() + idle if idle is not None else None
            try:
                job = self.jobs.get(timeout=idle)
            except queue.Empty:
                self._unload(f"idle for {self.idle_for:g} s")
                continue
            if job is None:
                break
            self.current = job
            try:
                self._run(job)
            finally:
                self.idle_for = self.keep_alive if job.keep_alive is None else job.keep_alive
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
        if job.delete:
            self._unload("its artifact is being deleted")
            try:
                job.emit("done", self._delete())
            except Exception as error:  # noqa: BLE001 (answered to the client)
                job.emit("error", error)
            return
        if job.load_only and job.keep_alive == 0:  # Ollama's "unload now"
            self._unload("asked to (keep_alive 0)")
            job.emit("done", None)
            return
        try:
            loads = self.stats["loads"]
            model = self._loaded()
            if self.stats["loads"] != loads:
                job.load_s = model.load_s
            if job.load_only:
                job.emit("done", None)
                return
            settings = dict(job.settings)
            if settings.get("max_new_tokens") is None:  # up to the end of the context, like Ollama
                limits = [n for n in (model.context_length, job.context_cap) if n]
                settings["max_new_tokens"] = min(limits) if limits else DEFAULT_MAX_TOKENS
            if job.messages is None:
                self._generate(job, model, job.prompt, settings)
            else:
                self._chat(job, model, settings)
        except Exception as error:
            if isinstance(error, InvalidConfigError) and "constrain" in str(error):  # names the request field
                field_ = "tools" if job.choice not in (None, "none") else job.format_param
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
        from .. import tools

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
        from ..constraints import Constraint

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
        model.usage = dataclasses.replace(model.usage, prompt_tokens=before.prompt_tokens,
                                          cached_tokens=before.cached_tokens,
                                          generated_tokens=before.generated_tokens + model.usage.generated_tokens)

    def _loaded(self):
        if self.model is None:
            from ..runtime import load

            said: list[str] = []

            def progress(message: str, fraction: float | None = None) -> None:
                if not said or said[-1] != message:
                    said.append(message)
                    log.info("%s: %s", self.id, message)

            with _load_lock:
                self.model = load(self.name, progress=progress, **self.load_kwargs)
            self.stats["loads"] += 1
            self.artifact = Path(self.model.artifact_dir)
            self._measure(self.model)
            log.info("%s: loaded %r in %.1f s", self.id, self.model, self.model.load_s)
        return self.model

    def _delete(self) -> list[str]:
        """Remove this model's artifact from aipc's cache: the one its last load used, else the one a
        load would use now (quantized again on the next request). A folder outside the cache (an
        artifact served by its path) is never removed. Returns the names removed."""
        import shutil

        from .. import cache
        from ..plugins import registry
        from ..runtime import artifact_path, choose
        from ..sources import resolve

        path = self.artifact
        if path is None:
            resolved = resolve(self.name)
            if resolved.artifact_dir is not None:
                path = resolved.artifact_dir
            else:
                settings = {k: self.load_kwargs.get(k) for k in ("backend", "precision", "device")}
                backend, device, precision = choose(registry(), **settings, need_present=False)
                path = artifact_path(backend, resolved, precision, device, self.load_kwargs.get("options") or {})
        if (cache.home() / "artifacts") not in Path(path).resolve().parents or not Path(path).is_dir():
            return []
        with _load_lock:  # not while a quantization (of this model under another id, too) runs
            shutil.rmtree(path)
        self.artifact = None
        log.info("%s: deleted its artifact %s", self.id, Path(path).name)
        return [Path(path).name]

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
            return await error.response(dialect_of(scope['path']))(scope, receive, send)
        too_big = ApiError(413, f"the request body is larger than {self.max_body} bytes", code="request_too_large")
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            return await too_big.response(dialect_of(scope['path']))(scope, receive, send)
        body, more = bytearray(), scope["method"] in ("POST", "PUT", "PATCH", "DELETE")
        while more:  # read it all here: a chunked body has no Content-Length to check
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return await too_big.response(dialect_of(scope['path']))(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_SPEC = re.compile(r"(?:(?P<id>[\w.:-]+)=)?(?P<model>.+?)"
                   r"(?:@(?P<backend>[\w.-]*)(?::(?P<precision>[\w.-]*)(?::(?P<device>[\w.-]*))?)?)?")


@dataclass(frozen=True)
class ServedModel:
    """One ``--model`` value: ``[NAME=]MODEL[@BACKEND[:PRECISION[:DEVICE]]]``.

    ``NAME`` is the id clients ask for (default: ``MODEL``, or a path's last part); ``BACKEND``,
    ``PRECISION`` and ``DEVICE`` override the server-wide ``--backend/--precision/--device`` for
    this model (an empty part keeps the server's). A value that is an existing path is taken whole.
    """

    id: str
    name: str
    settings: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> "ServedModel":
        match = None if Path(text).expanduser().exists() else _SPEC.fullmatch(text)
        name = match["model"] if match else text
        settings = {k: match[k] for k in ("backend", "precision", "device") if match and match[k]}
        is_path = name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
        model_id = (match and match["id"]) or (Path(name).name if is_path else name)
        return cls(model_id, name, settings)


def served_models(values: tuple[str, ...]) -> dict[str, ServedModel]:
    """Model id -> what to load, for the ``--model`` values (ids must differ)."""
    served: dict[str, ServedModel] = {}
    for value in values:
        model = ServedModel.parse(value)
        if model.id in served:
            raise InvalidConfigError(f"two --model values share the id {model.id!r}: name one, e.g. "
                                     f"--model {model.id}-2={value}")
        served[model.id] = model
    return served


async def parse(request: Request, model: type[BaseModel]) -> Any:
    """The JSON body as ``model`` (whatever the Content-Type: curl users forget it)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


async def watch(request: Request, job: Job) -> None:
    """Until cancelled: notice the client leaving, and stop the job then."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancelled.set()
    job.events.put_nowait(("gone", None))


class Hub:
    """The served models: their ids, the names they may be asked for, their slots."""

    def __init__(self, model_names: tuple[str, ...], load_kwargs: dict[str, Any], keep_alive: float,
                 max_queue: int) -> None:
        from ..sources import DEFAULT_MODEL

        self.served = served_models(tuple(model_names) or (DEFAULT_MODEL,))
        self.ids = {i: model.name for i, model in self.served.items()}
        names = [model.name for model in self.served.values()]  # a model served twice is asked for by id
        self.aliases = {**{m.name: i for i, m in self.served.items() if names.count(m.name) == 1},
                        **{i: i for i in self.served}}
        self.load_kwargs, self.keep_alive, self.max_queue = load_kwargs, keep_alive, max_queue
        self.slots: dict[str, ModelSlot] = {}
        self.created = int(time.time())

    def start(self) -> None:
        for model_id, model in self.served.items():
            settings = {**self.load_kwargs, **model.settings}
            self.slots[model_id] = ModelSlot(model_id, model.name, settings, self.keep_alive, self.max_queue)

    async def stop(self) -> None:
        for slot in self.slots.values():
            slot.stop()
        for slot in self.slots.values():
            await asyncio.to_thread(slot.thread.join, 10)

    def find(self, model: str) -> ModelSlot | None:
        model_id = self.aliases.get(model)
        if model_id is None and model.endswith(":latest"):  # Ollama clients add the default tag
            model_id = self.aliases.get(model[: -len(":latest")])
        return self.slots.get(model_id) if model_id else None

    def slot_for(self, model: str, param: str = "model") -> ModelSlot:
        slot = self.find(model)
        if slot is None:
            raise ApiError(404, f"the model {model!r} is not served here (served: {', '.join(self.ids)})",
                           param=param, code="model_not_found")
        return slot


async def first_event(request: Request, slot: ModelSlot, job: Job) -> tuple[str, Any]:
    """Submit ``job`` and wait for its first event (so that errors before the first piece get a real
    status), watching for the client leaving meanwhile."""
    slot.submit(job)
    watcher = asyncio.create_task(watch(request, job))
    try:
        return await job.events.get()
    except BaseException:
        job.cancelled.set()
        raise
    finally:
        watcher.cancel()


async def collect(request: Request, job: Job, event: tuple[str, Any]) -> tuple[tuple[str, Any], list[str], list[list[str]]]:
    """The rest of a non-streamed job: (last event, text pieces, tool-call pieces per call)."""
    watcher = asyncio.create_task(watch(request, job))
    pieces: list[str] = []
    calls: list[list[str]] = []
    try:
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
    return event, pieces, calls
