"""``aipc serve``: one HTTP server (FastAPI + uvicorn) speaking three API dialects over any backend.

- OpenAI chat and completions (:mod:`.openai`): ``POST /v1/chat/completions``,
  ``POST /v1/completions``, ``GET /v1/models[/ID]``;
- OpenAI Responses (:mod:`.responses`): ``POST /v1/responses``, stateless;
- Ollama (:mod:`.ollama`): ``/api/chat``, ``/api/generate``, ``/api/tags``, ``/api/show``,
  ``/api/ps``, ``/api/version``, ``/api/pull``, ``/api/delete``;
- ``GET /health`` (per model: loaded, running, waiting, loads, completed, cancelled, failed,
  rejected, the last finish_reason, completion and cached token counts).

All of them share :mod:`.common`: the models' slots and queues, cancellation, errors.

How it works:

- Every ``--model`` gets a :class:`ModelSlot`: one worker thread that loads the model on the
  first request (quantizing it into the cache if needed, so exactly once), then runs that
  model's requests one at a time from an unbounded FIFO whose length the slot bounds itself
  (``--max-queue`` waiting + 1 running; past it: 429 with Retry-After, 503 on Ollama's API). A
  model idle for ``--keep-alive`` seconds is unloaded (negative: never, 0: right after each
  request); Ollama's per-request ``keep_alive`` overrides it until the next request.
- The worker hands text pieces to the request's event loop; the HTTP side only awaits them.
  A client that goes away (streaming or not) sets the job's cancel flag; the worker then
  closes the generation iterator, which stops the backend (finish_reason ``cancelled`` in the
  log and in ``/health``).
- Prefix reuse: each model keeps the KV state of its ``--cache-slots`` most recent
  conversations (if its backend has a prefix cache), so a client resending a growing history
  has only the new part prefilled, with no session id; ``usage.prompt_tokens_details.cached_tokens``
  says how many prompt tokens were reused. Requests of a model run one at a time, so the slots are
  never shared by two generations at once; a cancelled generation leaves its slot usable.
- Backend, precision, device and ``-o`` options are server-wide (the CLI's) unless a ``--model``
  value names its own: ``[NAME=]MODEL[@BACKEND[:PRECISION[:DEVICE]]]`` (:class:`.common.ServedModel`),
  so one server runs a model on the NPU and another on the GPU, or one model on two backends under
  two names. A client names a model by its id in ``/v1/models``: ``NAME``, else the model text
  itself, or a path's last part.
  Every answer of a generation carries ``X-Aipc-Backend: BACKEND/DEVICE/PRECISION``; ``/v1/models``
  and ``/api/show`` say the same and the context length the model accepts (once it has loaded).
- Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` (Ollama-style
  ``{"error": "..."}`` under ``/api/``): 400 for malformed JSON, wrongly typed fields and invalid
  values, 401 for a missing or wrong key (every path, /health too, when ``--api-key`` is set), 404
  for an unknown model, 413 for a body over 2 MiB, 429 (Ollama: 503) when a queue is full, 503 for
  requests still open at Ctrl-C.

This package imports FastAPI: only the ``serve`` command imports it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import AipcError, InvalidConfigError
from . import ollama, openai, responses, schema
from .common import MAX_BODY_BYTES, ApiError, Guard, Hub, Job, ModelSlot, api_error, dialect_of, log, served_models
from .schema import route

__all__ = ["MAX_BODY_BYTES", "ApiError", "Job", "ModelSlot", "create_app", "serve"]


def create_app(model_names: tuple[str, ...], load_kwargs: dict[str, Any], api_key: str | None = None,
               keep_alive: float = 300.0, max_queue: int = 8, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    hub = Hub(tuple(model_names), load_kwargs, keep_alive, max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        hub.start()
        yield
        await hub.stop()

    app = FastAPI(title="aipc", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.slots = hub.slots
    app.state.hub = hub
    app.add_middleware(Guard, api_key=api_key, max_body=max_body_bytes)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError):
        return error.response(dialect_of(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError):
        dialect = dialect_of(request.url.path)
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            return ApiError(400, "the request body is not valid JSON", code="invalid_json").response(dialect)
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return ApiError(400, message, param=param, code="invalid_value").response(dialect)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return ApiError(error.status_code, str(error.detail), code=code,
                        headers=getattr(error, "headers", None)).response(dialect_of(request.url.path))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, error: Exception):
        log.exception("unexpected error")
        return api_error(error).response(dialect_of(request.url.path))

    @app.get("/health", **route("openai"))
    async def health():
        return {"status": "ok", "version": __version__, "models": {i: s.status() for i, s in hub.slots.items()}}

    openai.register(app, hub)
    responses.register(app, hub)
    ollama.register(app, hub)
    schema.install(app, openai.ChatRequest, openai.CompletionRequest, responses.ResponsesRequest,
                   ollama.ChatRequest, ollama.GenerateRequest, ollama.ModelRequest)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, model_names: tuple[str, ...] = (), backend: str | None = None,
          precision: str | None = None, device: str | None = None, options: tuple[str, ...] = (),
          trust_remote_code: bool = False, api_key: str | None = None, keep_alive: float = 300.0,
          max_queue: int = 8, max_body_bytes: int = MAX_BODY_BYTES, cache_slots: int = 4) -> None:
    """Run the server until Ctrl-C. Bad settings raise :class:`aipc.errors.AipcError` before it starts."""
    import uvicorn

    from ..plugins import registry
    from ..runtime import choose, parse_options
    from ..sources import DEFAULT_MODEL

    if cache_slots < 0:
        raise InvalidConfigError(f"--cache-slots must be a whole number >= 0, got {cache_slots}")
    if max_queue < 0:
        raise InvalidConfigError(f"--max-queue must be >= 0, got {max_queue}")
    reg = registry()
    for model in served_models(tuple(model_names) or (DEFAULT_MODEL,)).values():  # fail now, not on a request
        wanted = {"backend": backend, "precision": precision, "device": device, **model.settings}
        if any(wanted.values()):
            try:
                choose(reg, **wanted, need_present=True)
            except AipcError as error:
                raise type(error)(f"--model {model.id}: {error}") from None
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