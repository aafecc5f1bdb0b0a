"""The server's OpenAPI document (``/openapi.json``): what each endpoint really accepts and answers.

The dialects parse their bodies by hand (:func:`.common.parse`, whatever the Content-Type), so
FastAPI cannot see them: a route says its body model with :func:`route` and :func:`install` puts
the models into the document. Every route lists its answers: 200 with the media types it streams
in, and each error status in its API's error shape (OpenAI's object, Ollama's string).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, ValidationInfo, WithJsonSchema, field_validator
from pydantic.json_schema import models_json_schema


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error object."""

    error: OpenAIErrorDetail


class OllamaError(BaseModel):
    """Ollama's error shape."""

    error: str


NO_OP = (None, False, 0, "", [], {})


def no_op(value: Any) -> bool:
    """Whether a field aipc does not implement is absent or at a value that changes nothing."""
    return value in (None, "") or value == 0 or value == [] or value == {}


Refused = Annotated[Any, WithJsonSchema({"enum": list(NO_OP), "description":
                                         "Not supported by aipc: accepted absent or at its no-op value; "
                                         "anything else is refused (400 naming the field)"})]
"""A field aipc does not implement: validated by hand (refused unless at a no-op value); documented
as only those values."""

class Body(BaseModel):
    """A request body: strict ("5" is not a number, "true" not a boolean; JSON's 2.0 is the integer
    2, as in JSON Schema); unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _integral(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, float) and value.is_integer():
            annotation = str(cls.model_fields[info.field_name].annotation)
            if "int" in annotation and "float" not in annotation:
                return int(value)
        return value


_WHY = {400: "Malformed JSON, a wrongly typed or invalid field, a refused feature (the field is named), a "
             "prompt over the context", 401: "Missing or wrong API key (only with --api-key)",
        404: "The model is not served here", 413: "The body is larger than the limit",
        429: "The model's queue is full (Retry-After says when to retry)",
        501: "Not supported by aipc", 503: "The model's queue is full (Ollama's convention), or the server stops",
        500: "The backend failed (the server log says why)"}
_BODY = "x-aipc-body"  # the attribute of an endpoint naming its body model


def route(dialect: str, *errors: int, body: type[BaseModel] | None = None, streams: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``app.get/post/...``: the answers (200 as JSON, or also ``streams`` —
    ``text/event-stream`` or NDJSON — and each of ``errors`` in ``dialect``'s error shape); 401 and
    413 are always possible (API key, body size)."""
    shape = OllamaError if dialect == "ollama" else OpenAIError
    statuses = sorted({*errors, 401, 413} | ({400} if body else set()))
    media: dict[str, Any] = {"application/json": {"schema": {}}}
    if streams:
        media[streams] = {"schema": {"type": "string"}}
    responses: dict[int | str, Any] = {200: {"description": "The answer", "content": media}}
    responses.update({status: {"model": shape, "description": _WHY[status]} for status in statuses})
    return {"responses": responses, "openapi_extra": {_BODY: _name(body)} if body else None}


def _name(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def install(app: FastAPI, *bodies: type[BaseModel]) -> None:
    """Make ``app.openapi()`` describe each route's body model (one of ``bodies``) as its JSON body."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, routes=app.routes,
                               description="aipc serve: OpenAI's and Ollama's APIs over local backends")
        refs, defs = models_json_schema([(m, "validation") for m in bodies],
                                        ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs.get("$defs", {}))
        by_name = {_name(m): refs[(m, "validation")] for m in bodies}
        for item in app.routes:
            if not isinstance(item, APIRoute) or not (item.openapi_extra or {}).get(_BODY):
                continue
            for method in item.methods:
                operation = document["paths"][item.path_format][method.lower()]
                name = operation.pop(_BODY)
                operation["requestBody"] = {"required": True,
                                            "content": {"application/json": {"schema": by_name[name]}}}
        app.openapi_schema = document
        return document

    app.openapi = openapi
