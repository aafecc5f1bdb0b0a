"""Helpers of the conformance suite (importable by plugin authors' own tests too)."""

from __future__ import annotations

from pathlib import Path

import aipc
from aipc.types import GenerationConfig

REFERENCE = "transformers"
#: prompts for greedy comparisons; chat-templated, so every backend sees the same final text
PROMPTS = ("Can you introduce yourself?", "What is the capital of France?", "Count from one to ten.", "Tell me a story.")
#: for first-answer-token agreement of quantized models with the reference
AGREEMENT_PROMPTS = PROMPTS + (
    "What is 2 + 2?", "Name a primary color.", "What language is spoken in Spain?", "Write a haiku about the sea.",
    "What is the largest planet in the solar system?", "Give me a synonym for happy.",
)
SYSTEM = "You are a helpful AI assistant."  # the walkthrough's system prompt


class ModelPool:
    """Loaded models shared by the tests of a session (loading is the slow part)."""

    def __init__(self) -> None:
        self.models: dict[tuple, aipc.Model] = {}

    def get(self, model: Path, backend: str, precision: str, device: str | None = None,
            cache_slots: int | None = None) -> aipc.Model:
        key = (str(model), backend, precision, device, cache_slots)
        if key not in self.models:
            self.models[key] = aipc.load(str(model), backend=backend, precision=precision, device=device,
                                         cache_slots=cache_slots)
        return self.models[key]


def run_raw(model: aipc.Model, prompt: str, system: str | None = None, **settings) -> tuple[str, list[int], int]:
    """The backend's own stream for a chat-templated prompt: (text, ids, token count)."""
    chunks = list(model.raw_stream(model.format_prompt(prompt, system), GenerationConfig(**settings)))
    ids = [i for c in chunks for i in c.ids]
    return "".join(c.text for c in chunks), ids, sum(c.tokens for c in chunks)


def run_turn(model: aipc.Model, messages, **settings) -> tuple[str, list[int], int]:
    """The backend's own stream for a chat-templated conversation: (text, ids, prompt tokens it
    reported as reused, i.e. ``LoadedModel.cached_tokens``)."""
    model.loaded.cached_tokens = 0
    chunks = list(model.raw_stream(model.format_chat(messages), GenerationConfig(**settings)))
    return "".join(c.text for c in chunks), [i for c in chunks for i in c.ids], model.loaded.cached_tokens


#: JSON schemas a constrained backend must honour: nested objects, arrays, enums, bounded
#: numbers, required fields, string patterns (bounded, so every answer can end well within 160 tokens)
SCHEMAS = (
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"], "additionalProperties": False},
    {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}}, "required": ["answer"], "additionalProperties": False},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 100}}, "required": ["n"], "additionalProperties": False},
    {"type": "object", "properties": {"colors": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                                 "minItems": 1, "maxItems": 3}}, "required": ["colors"], "additionalProperties": False},
    {"type": "object", "properties": {"person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}}, "required": ["person"], "additionalProperties": False},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["code"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "score": {"type": "integer", "minimum": 0, "maximum": 10}},
     "required": ["ok", "score"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 10}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 30},
                                      "tags": {"type": "array", "items": {"enum": ["news", "sport", "tech"]}, "maxItems": 2}},
     "required": ["title", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                                      "event": {"type": "string", "maxLength": 24}}, "required": ["date", "event"], "additionalProperties": False},
)
#: one question per schema
SCHEMA_PROMPTS = (
    "What is the capital of France?", "Is the sky blue?", "How many legs does a spider have?",
    "Name some colors of the rainbow.", "Describe a person.", "What is the currency code of Japan?",
    "Is water wet? Give a confidence score.", "Pick a few numbers.", "Write a headline about football.",
    "When did the first moon landing happen?",
)


# ------------------------------------------------ the backends' own constrained-output tests


def _text(n: int) -> dict:
    return {"type": "string", "maxLength": n}


#: name -> (prompt, schema): nested object, array, enum, bounded integers, required fields, patterns
NAMED_SCHEMAS = {
    "nested": ("Describe a person who lives in Paris as JSON.", {
        "type": "object", "additionalProperties": False, "required": ["person", "city"],
        "properties": {
            "person": {"type": "object", "additionalProperties": False, "required": ["name", "age"],
                       "properties": {"name": _text(24), "age": {"type": "integer", "minimum": 0, "maximum": 120}}},
            "city": _text(24)}}),
    "array": ("List three colours as JSON.", {
        "type": "object", "additionalProperties": False, "required": ["colours"],
        "properties": {"colours": {"type": "array", "items": _text(12), "minItems": 2, "maxItems": 4}}}),
    "enum": ("Is the sky blue? Answer as JSON.", {
        "type": "object", "additionalProperties": False, "required": ["answer"],
        "properties": {"answer": {"enum": ["yes", "no", "maybe"]}}}),
    "bounded": ("Rate Paris from 1 to 10 as JSON.", {
        "type": "object", "additionalProperties": False, "required": ["score"],
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}}}),
    "required": ("Give a book title and author as JSON.", {
        "type": "object", "additionalProperties": False, "required": ["title", "author", "year"],
        "properties": {"title": _text(40), "author": _text(30),
                       "year": {"type": "integer", "minimum": 1000, "maximum": 2100}}}),
    "pattern": ("Give an airport code and a flight number as JSON.", {
        "type": "object", "additionalProperties": False, "required": ["code", "flight"],
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                       "flight": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2,4}$"}}}),
}

CASE_REGEX = r"(Paris|London|Rome|Berlin) is the capital of [A-Z][a-z]+\."
CASE_GRAMMAR = 'root ::= answer " " number\nanswer ::= "yes" | "no"\nnumber ::= [1-9] [0-9]?\n'
CASE_GRAMMAR_AS_REGEX = r"(yes|no) [1-9][0-9]?"


def check_schema_answer(model: aipc.Model, name: str, system: str | None = None) -> None:
    """``NAMED_SCHEMAS[name]``'s answer ends by itself and validates under the schema."""
    import json

    from jsonschema import validate

    from aipc.constraints import Constraint

    prompt, schema = NAMED_SCHEMAS[name]
    text = model.complete(prompt, system=system, max_new_tokens=160, constraint=Constraint.json_schema(schema))
    assert model.usage.finish_reason == "stop", f"cut at the token limit: {text!r}"
    validate(json.loads(text), schema)


def check_regex_and_grammar_answers(model: aipc.Model) -> None:
    """``CASE_REGEX`` output matches whole where the free answer does not; ``CASE_GRAMMAR``'s matches."""
    import re

    from aipc.constraints import Constraint

    free = model.complete("What is the capital of France?", max_new_tokens=40)
    assert not re.fullmatch(CASE_REGEX, free), f"pick a prompt whose free answer does not match already: {free!r}"
    text = model.complete("What is the capital of France?", max_new_tokens=40, constraint=Constraint("regex", CASE_REGEX))
    assert re.fullmatch(CASE_REGEX, text), text
    assert model.usage.finish_reason == "stop"
    text = model.complete("Is Paris in France? Answer yes or no, then a number from 1 to 99.",
                          max_new_tokens=20, constraint=Constraint("grammar", CASE_GRAMMAR))
    assert re.fullmatch(CASE_GRAMMAR_AS_REGEX, text), text
