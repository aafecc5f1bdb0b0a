"""Ollama's API (docs/api.md of ollama/ollama), on the same slots and queues as the OpenAI one.

- ``POST /api/chat`` and ``POST /api/generate``: newline-delimited JSON, streamed by default,
  one object with ``stream: false``; the last object has ``done: true``, ``done_reason`` and the
  timings in nanoseconds (``total_duration`` from the request's arrival, ``load_duration``,
  ``prompt_eval_count`` = the prompt's tokens, ``prompt_eval_duration`` = time to the first token,
  ``eval_count``, ``eval_duration``). An empty ``prompt`` / ``messages`` loads the model
  (``done_reason: "load"``), and with ``keep_alive: 0`` unloads it (``"unload"``), as Ollama does.
- ``options``: ``temperature``, ``top_p``, ``top_k``, ``num_predict`` (negative: up to the end of
  the context), ``stop``, ``seed``, ``repeat_penalty``, ``num_ctx``. aipc does not resize a model's
  context: without ``num_predict`` an answer may run to the end of the model's context, and
  ``num_ctx`` lowers that default limit to ``num_ctx`` new tokens (the prompt never counts against
  it); a value above the model's own context is capped to it (the prompt + answer limit stays the
  model's, as ``/api/show`` says). Options that only tune Ollama's runtime (``num_thread``,
  ``num_gpu``, ``num_batch``, ``use_mmap``, ...) are ignored; ones that would change the answer and
  aipc does not implement (``mirostat``, ``min_p``, ``typical_p``, penalties, ...) are refused
  with 400 naming them unless at their no-op value. Unset options are aipc's defaults (greedy),
  not Ollama's (temperature 0.8). ``ignore_eos`` (aipc's, as vLLM's) runs to ``num_predict``.
- ``keep_alive`` (seconds, or a duration such as ``"5m"``, ``"1h"``; negative: forever) keeps
  the model loaded that long after the request. ``format``: ``"json"`` or a JSON schema.
- ``GET /api/tags``, ``GET /api/ps``, ``POST /api/show``, ``GET /api/version``: the served models.
  ``/api/show``'s ``model_info`` has ``general.architecture: "aipc"``, so the key apps read for the
  context length is ``aipc.context_length``; beside it ``aipc.backend``, ``aipc.device``,
  ``aipc.precision`` (known once the model has loaded).
- ``POST /api/pull`` prepares a served model: quantizes it into aipc's cache (status lines as
  NDJSON). It does not download: a model that is not served here is 404. ``DELETE /api/delete``
  unloads a served model (after its queued requests) and removes its artifact from aipc's cache
  (404 when the cache has none); the model stays served, quantized again on its next request. An
  artifact served by its own path, outside the cache, is never removed.
- Refused (400 naming the field): ``images``, ``think``, ``tools``, ``logprobs``, ``suffix``,
  ``template``, ``context``; ``/api/create``, ``/api/copy``, ``/api/push``, ``/api/embed`` answer 501.
- Errors are ``{"error": "..."}``: 400 bad request, 401 missing key, 404 unknown model, 413 body
  too large, 503 when the model's queue is full (Ollama's "server busy") or the server stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from .. import __version__
from ..errors import InvalidConfigError
from .common import ApiError, Hub, Job, ModelSlot, _load_lock, api_error, first_event, collect, log, parse
from .schema import Body as _Strict, Refused, no_op, route

OLLAMA_VERSION = "0.12.0"  # the Ollama release whose API this mirrors (what /api/version answers)
NDJSON = "application/x-ndjson"
_IGNORED = {"num_thread", "num_gpu", "main_gpu", "num_batch", "low_vram", "use_mmap", "use_mlock", "numa",
            "vocab_only", "f16_kv", "logits_all", "embedding_only", "num_keep", "repeat_last_n",
            "penalize_newline", "num_gqa", "rope_frequency_base", "rope_frequency_scale"}
_NO_OP = {"mirostat": 0, "tfs_z": 1, "typical_p": 1, "min_p": 0, "presence_penalty": 0,
          "frequency_penalty": 0, "mirostat_tau": None, "mirostat_eta": None}  # None: harmless when mirostat is 0




class Options(_Strict):
    # unknown options are refused by check() (runtime-only ones ignored): the schema lists the known ones
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"additionalProperties": False})
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    num_predict: Annotated[int | None, WithJsonSchema({"anyOf": [{"type": "null"}, {"type": "integer", "not": {"const": 0}}]})] = None
    stop: list[str] | str | None = None
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0)
    num_ctx: int | None = Field(None, ge=1)
    ignore_eos: bool | None = None  # aipc's extension (as vLLM's): generate exactly num_predict tokens

    def check(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if name in _IGNORED:
                continue
            if name not in _NO_OP:
                raise ApiError(400, f"options.{name}: unknown option", param=f"options.{name}")
            if _NO_OP[name] is not None and value is not None and value != _NO_OP[name]:
                raise ApiError(400, f"options.{name}: not supported by aipc (only {_NO_OP[name]!r}, its no-op value)",
                               param=f"options.{name}")
        if self.num_predict == 0:
            raise ApiError(400, "options.num_predict: must be >= 1, or negative for no limit",
                           param="options.num_predict")


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: Refused = None
    tool_calls: Refused = None
    thinking: Refused = None


class _Request(_Strict):
    model: str = Field(min_length=1)
    stream: bool = True
    options: Options | None = None
    format: Literal["", "json"] | dict[str, Any] | None = None
    keep_alive: float | str | None = None
    think: Refused = None
    logprobs: Refused = None
    top_logprobs: Refused = None
    tools: Refused = None

    REFUSED: ClassVar[tuple[str, ...]] = ("think", "logprobs", "top_logprobs", "tools")

    def refuse(self) -> None:
        for name in self.REFUSED:
            value = getattr(self, name)
            if not no_op(value):
                raise ApiError(400, f"{name}: not supported by aipc's Ollama API", param=name)
        if self.options is not None:
            self.options.check()

    def seconds(self) -> float | None:
        return None if self.keep_alive is None else keep_alive_seconds(self.keep_alive)

    def constraint(self):
        from ..constraints import Constraint

        if not self.format:
            return None
        if self.format == "json":
            return Constraint.json()
        try:
            return Constraint.json_schema(self.format)
        except InvalidConfigError as error:
            raise ApiError(400, f"format: {error}", param="format") from None

    def settings(self) -> dict[str, Any]:
        o = self.options or Options()
        stop = (o.stop,) if isinstance(o.stop, str) else tuple(o.stop or ())
        max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
        return {"max_new_tokens": max_tokens, "temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k,
                "repetition_penalty": o.repeat_penalty, "seed": o.seed, "stop": stop, "ignore_eos": o.ignore_eos,
                "constraint": self.constraint()}

    def job(self, **kwargs: Any) -> Job:
        cap = self.options.num_ctx if self.options else None
        return Job(asyncio.get_running_loop(), self.settings(), format_param="format", keep_alive=self.seconds(),
                   context_cap=cap, **kwargs)


class ChatRequest(_Request):
    messages: list[Message] = Field(default_factory=list)

    def refuse(self) -> None:
        super().refuse()
        for i, message in enumerate(self.messages):
            for name in ("images", "tool_calls", "thinking"):
                if not no_op(getattr(message, name)):
                    raise ApiError(400, f"messages.{i}.{name}: not supported by aipc's Ollama API",
                                   param=f"messages.{i}.{name}")


class GenerateRequest(_Request):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: Refused = None
    suffix: Refused = None
    template: Refused = None
    context: Refused = None

    REFUSED: ClassVar[tuple[str, ...]] = _Request.REFUSED + ("images", "suffix", "template", "context")


class ModelRequest(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra={
        "anyOf": [{"required": ["model"], "properties": {"model": {"type": "string", "minLength": 1}}},
                  {"required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}]})
    model: str | None = None
    name: str | None = None  # the older spelling
    stream: bool = True
    insecure: Any = None
    verbose: Any = None

    def model_name(self) -> str:
        name = self.model or self.name
        if not name:
            raise ApiError(400, "model: required", param="model")
        return name


_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)?$")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def keep_alive_seconds(value: float | str) -> float:
    """Ollama's keep_alive: a number of seconds or a Go-style duration ("5m", "1h30m", "-1")."""
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        return float(match[1]) * _UNIT[match[2]]
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)", text.lstrip("-"))
    if not parts or "".join(n + u for n, u in parts) != text.lstrip("-"):
        raise ApiError(400, f"keep_alive: not a duration: {value!r}", param="keep_alive")
    total = sum(float(n) * _UNIT[u] for n, u in parts)
    return -total if text.startswith("-") else total


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


def _digest(slot: ModelSlot) -> str:
    return hashlib.sha256(slot.name.encode()).hexdigest()


def details(slot: ModelSlot) -> dict[str, Any]:
    meta = slot.metadata()
    return {"parent_model": "", "format": meta["backend"] or "", "family": "", "families": None,
            "parameter_size": "", "quantization_level": meta["precision"] or ""}


def _final(job: Job, usage) -> dict[str, Any]:
    """The timing fields of the last object, in nanoseconds."""
    if usage is None:
        return {"total_duration": _ns(time.perf_counter() - job.created), "load_duration": _ns(job.load_s)}
    return {"done_reason": usage.finish_reason, "total_duration": _ns(time.perf_counter() - job.created),
            "load_duration": _ns(job.load_s), "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": _ns(usage.time_to_first_token_s), "eval_count": usage.generated_tokens,
            "eval_duration": _ns(usage.total_s - usage.time_to_first_token_s)}


async def _answer(request: Request, slot: ModelSlot, job: Job, stream: bool, chat: bool, action: str | None = None):
    """Run ``job`` and answer in Ollama's shape; ``action`` ("load"/"unload") for a job that only loads."""
    headers = {"X-Aipc-Backend": slot.header()}

    def piece(text: str) -> dict[str, Any]:
        head = {"model": slot.id, "created_at": _now()}
        return {**head, "message": {"role": "assistant", "content": text}, "done": False} if chat else \
            {**head, "response": text, "done": False}

    def last(usage) -> dict[str, Any]:
        body = {**piece(""), "done": True, **_final(job, usage)}
        if action:
            body["done_reason"] = action
        return body

    event = await first_event(request, slot, job)
    headers = {"X-Aipc-Backend": slot.header()}  # known now that the model has loaded
    if event[0] == "error":
        raise api_error(event[1], "messages" if chat else "prompt")
    if event[0] == "gone":
        return Response(status_code=499)
    if stream and not action:
        async def lines():
            try:
                current = event
                while current[0] == "piece":
                    yield json.dumps(piece(current[1]), ensure_ascii=False) + "\n"
                    current = await job.events.get()  # a disconnect cancels this generator (and so the job)
                if current[0] == "error":
                    yield json.dumps({"error": api_error(current[1]).message}) + "\n"
                elif current[0] == "done":
                    yield json.dumps(last(current[1])) + "\n"
            finally:
                job.cancelled.set()  # a no-op when the job is done; stops the generation when the client left

        return StreamingResponse(lines(), media_type=NDJSON, headers=headers)
    end, pieces, _calls = await collect(request, job, event)
    if end[0] == "gone":
        return Response(status_code=499)
    if end[0] == "error":
        raise api_error(end[1], "messages" if chat else "prompt")
    body = last(end[1])
    text = "".join(pieces)
    if chat:
        body["message"]["content"] = text
    else:
        body["response"] = text
    if stream:  # a load/unload answered as a one-line stream
        return StreamingResponse(iter([json.dumps(body) + "\n"]), media_type=NDJSON, headers=headers)
    return JSONResponse(body, headers=headers)


def register(app: FastAPI, hub: Hub) -> None:
    @app.get("/api/version", **route("ollama"))
    async def version():
        return {"version": OLLAMA_VERSION, "aipc": __version__}

    @app.post("/api/chat", **route("ollama", 404, 500, 503, body=ChatRequest, streams=NDJSON))
    async def chat(request: Request):
        body = await parse(request, ChatRequest)
        body.refuse()
        slot = hub.slot_for(body.model)
        if not body.messages:
            action = "unload" if body.seconds() == 0 else "load"
            return await _answer(request, slot, body.job(load_only=True), body.stream, chat=True, action=action)
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        return await _answer(request, slot, body.job(messages=messages), body.stream, chat=True)

    @app.post("/api/generate", **route("ollama", 404, 500, 503, body=GenerateRequest, streams=NDJSON))
    async def generate(request: Request):
        body = await parse(request, GenerateRequest)
        body.refuse()
        slot = hub.slot_for(body.model)
        if not body.prompt:
            action = "unload" if body.seconds() == 0 else "load"
            return await _answer(request, slot, body.job(load_only=True), body.stream, chat=False, action=action)
        if body.raw:
            job = body.job(prompt=body.prompt)
        else:
            messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
                [{"role": "user", "content": body.prompt}]
            job = body.job(messages=messages)
        return await _answer(request, slot, job, body.stream, chat=False)

    @app.get("/api/tags", **route("ollama"))
    async def tags():
        return {"models": [{"name": slot.id, "model": slot.id, "modified_at": _now(), "size": 0,
                            "digest": _digest(slot), "details": details(slot)} for slot in hub.slots.values()]}

    @app.get("/api/ps", **route("ollama"))
    async def ps():
        running = []
        for slot in hub.slots.values():
            if slot.model is None:
                continue
            meta = slot.metadata()
            expires = slot.expires_at if slot.current is None else (
                time.time() + slot.idle_for if slot.idle_for >= 0 else None)
            when = datetime.fromtimestamp(expires, timezone.utc) if expires is not None else \
                datetime(9999, 12, 31, tzinfo=timezone.utc)  # never (keep_alive negative)
            running.append({"name": slot.id, "model": slot.id, "size": 0, "digest": _digest(slot),
                            "details": details(slot), "expires_at": when.isoformat().replace("+00:00", "Z"),
                            "size_vram": 0, "context_length": meta["context_length"]})
        return {"models": running}

    @app.post("/api/show", **route("ollama", 404, body=ModelRequest))
    async def show(request: Request):
        slot = hub.slot_for((await parse(request, ModelRequest)).model_name())
        meta = slot.metadata()
        info = {"general.architecture": "aipc", "general.name": slot.id, "aipc.source": slot.name,
                "aipc.context_length": meta["context_length"], "aipc.max_prompt_tokens": meta["max_prompt_tokens"],
                "aipc.backend": meta["backend"], "aipc.device": meta["device"], "aipc.precision": meta["precision"],
                "aipc.loaded": meta["loaded"]}
        return JSONResponse({"modelfile": "", "parameters": "", "template": "", "details": details(slot),
                             "model_info": info, "capabilities": ["completion"], "modified_at": _now()},
                            headers={"X-Aipc-Backend": slot.header()})

    @app.post("/api/pull", **route("ollama", 404, 500, body=ModelRequest, streams=NDJSON))
    async def pull(request: Request):
        body = await parse(request, ModelRequest)
        slot = hub.slot_for(body.model_name())
        return await _pull(slot, body.stream)

    @app.delete("/api/delete", **route("ollama", 404, 500, 503, body=ModelRequest))
    async def delete(request: Request):
        name = (await parse(request, ModelRequest)).model_name()
        slot = hub.slot_for(name)
        job = Job(asyncio.get_running_loop(), {}, load_only=True, delete=True)
        slot.submit(job)  # after the model's running and waiting requests
        kind, value = await job.events.get()
        if kind == "error":
            raise api_error(value)
        if not value:
            return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        return Response(status_code=200)

    for path, method in (("/api/create", "POST"), ("/api/copy", "POST"),
                         ("/api/push", "POST"), ("/api/embed", "POST"), ("/api/embeddings", "POST")):
        app.add_api_route(path, _refuse(path), methods=[method], include_in_schema=False)  # 501


def _refuse(path: str):
    async def refused():
        return JSONResponse({"error": f"{path}: aipc does not support this endpoint"}, status_code=501)

    return refused


async def _pull(slot: ModelSlot, stream: bool):
    """Quantize a served model into the cache (a no-op when it is there), reporting as NDJSON."""
    from ..runtime import quantize

    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue()
    kwargs = {k: slot.load_kwargs.get(k) for k in ("backend", "precision", "device", "options", "trust_remote_code")}

    def progress(message: str, fraction: float | None = None) -> None:
        line: dict[str, Any] = {"status": message}
        if fraction is not None:
            line.update(completed=int(fraction * 100), total=100)
        loop.call_soon_threadsafe(lines.put_nowait, line)

    def work() -> None:
        try:
            with _load_lock:
                quantize(slot.name, progress=progress, **kwargs)
            loop.call_soon_threadsafe(lines.put_nowait, {"status": "success"})
        except Exception as error:  # noqa: BLE001 (answered to the client)
            log.warning("%s: pull failed: %s", slot.id, error)
            loop.call_soon_threadsafe(lines.put_nowait, {"error": api_error(error).message})
        loop.call_soon_threadsafe(lines.put_nowait, None)

    task = asyncio.get_running_loop().run_in_executor(None, work)

    async def produce():
        while (line := await lines.get()) is not None:
            yield line

    if stream:
        async def ndjson():
            async for line in produce():
                yield json.dumps(line) + "\n"
            await task

        return StreamingResponse(ndjson(), media_type=NDJSON)
    last: dict[str, Any] = {}
    async for line in produce():
        last = line
    await task
    if "error" in last:
        return JSONResponse(last, status_code=500)
    return {"status": "success"}
