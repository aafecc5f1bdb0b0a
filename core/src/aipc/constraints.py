"""Constrained output: what a generation's text must match, checked before any model work.

Three kinds, shared by every runtime aipc drives (OpenVINO GenAI's XGrammar, onnxruntime-genai's
llguidance, llguidance for PyTorch):

- ``json_schema``: JSON text valid under a JSON Schema (``value``: the schema as JSON text);
  ``Constraint.json()`` is any JSON object (the schema ``{"type": "object"}``);
- ``regex``: text matching a regular expression (``value``: the pattern, matched whole);
- ``grammar``: text derived from a GBNF grammar (llama.cpp's format, which XGrammar reads as
  its EBNF and llguidance converts to Lark) whose start rule is ``root``.

A backend lists the kinds it honours in ``Capabilities.constraints``; asking for another kind is
an error, never silently unconstrained output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfigError

KINDS = ("json_schema", "regex", "grammar")


@dataclass(frozen=True)
class Constraint:
    """What the generated text must match: ``kind`` (one of :data:`KINDS`) and ``value``."""

    kind: str
    value: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidConfigError(f"unknown constraint {self.kind!r}: choose one of {', '.join(KINDS)}")
        if not isinstance(self.value, str) or not self.value.strip():
            raise InvalidConfigError(f"the {self.kind} constraint is empty")
        if self.kind == "json_schema":
            check_schema(self.schema)
        elif self.kind == "regex":
            try:
                re.compile(self.value)
            except re.error as error:
                raise InvalidConfigError(f"the regex is not valid: {error}") from None
        elif not re.search(r"^\s*root\s*::=", self.value, re.MULTILINE):
            raise InvalidConfigError("the grammar has no 'root ::= ...' rule (GBNF, as llama.cpp's grammars)")

    @property
    def schema(self) -> Any:
        """The JSON schema (``json_schema`` constraints)."""
        try:
            return json.loads(self.value)
        except ValueError as error:
            raise InvalidConfigError(f"the JSON schema is not valid JSON: {error}") from None

    @classmethod
    def json(cls) -> Constraint:
        """Any JSON object (OpenAI's ``json_object``, Ollama's ``format: "json"``)."""
        return cls("json_schema", '{"type": "object"}')

    @classmethod
    def json_schema(cls, schema: Any) -> Constraint:
        """JSON valid under ``schema`` (a dict, or JSON text)."""
        return cls("json_schema", schema if isinstance(schema, str) else json.dumps(schema))


def check_schema(schema: Any) -> None:
    """Raise InvalidConfigError (one line) unless ``schema`` is a valid JSON Schema."""
    if not isinstance(schema, (dict, bool)):
        raise InvalidConfigError(f"a JSON schema must be an object, got {type(schema).__name__}")
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise InvalidConfigError(f"the JSON schema is not valid at {where}: {error.message}") from None
