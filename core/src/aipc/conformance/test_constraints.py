"""Constrained output (``capabilities.constraints``): generated text matches a JSON schema, a
regex or a GBNF grammar, under the backend's own constrained decoding; at the backend's exact
precisions the greedy output equals the reference backend's under the same constraint."""

from __future__ import annotations

import json
import re

import pytest

from aipc.conformance.support import REFERENCE, SCHEMA_PROMPTS, SCHEMAS, SYSTEM, run_raw
from aipc.constraints import Constraint
from aipc.errors import InvalidConfigError

GRAMMAR = 'root ::= "The answer is " [0-9]+ "." | "I do not know."'
REGEX = r"(Yes|No), because [a-z ]{1,40}\."


def _claims(backend_info, kind):
    if kind not in backend_info.capabilities.constraints:
        pytest.skip(f"capabilities do not claim {kind} constraints")


@pytest.mark.real_model
def test_json_schema_output_validates(pool, smollm2, backend_info, backend_name, precision, device):
    _claims(backend_info, "json_schema")
    from jsonschema import validate

    model = pool.get(smollm2, backend_name, precision, device)
    for schema, question in zip(SCHEMAS, SCHEMA_PROMPTS):
        text = model.complete(f"{question} Answer in JSON.", system=SYSTEM, max_new_tokens=160,
                              constraint=Constraint.json_schema(schema))
        assert model.usage.finish_reason == "stop", f"{question!r}: no end within 160 tokens: {text!r}"
        try:
            value = json.loads(text)
        except ValueError:
            pytest.fail(f"{question!r}: output is not JSON: {text!r}")
        validate(value, schema)


@pytest.mark.real_model
def test_regex_and_grammar_output_match(pool, smollm2, backend_info, backend_name, precision, device):
    model = pool.get(smollm2, backend_name, precision, device)
    checked = 0
    for kind, value, pattern, question in (
        ("regex", REGEX, REGEX, "Is Paris in France?"),
        ("grammar", GRAMMAR, r"The answer is [0-9]+\.|I do not know\.", "What is 2 + 2?"),
    ):
        if kind not in backend_info.capabilities.constraints:
            continue
        text = model.complete(question, system=SYSTEM, max_new_tokens=48, constraint=Constraint(kind, value))
        assert re.fullmatch(pattern, text), f"{kind} constraint: {text!r} does not match"
        checked += 1
    if not checked:
        pytest.skip("capabilities claim neither regex nor grammar constraints")


def test_constrained_greedy_output_matches_reference(pool, tiny_phi3, backend_info, backend_name, precision, device):
    """fp32 on the tiny Phi-3: the same logits under the same constraint give the same tokens."""
    if precision != "fp32" or precision not in backend_info.capabilities.exact_precisions:
        pytest.skip("compared at fp32 when it is declared exact")
    if not backend_info.capabilities.constraints:
        pytest.skip("capabilities claim no constraints")
    model, reference = pool.get(tiny_phi3, backend_name, precision, device), pool.get(tiny_phi3, REFERENCE, "fp32")
    # constraints that leave no choice but the model's: libraries differ in whether text the constraint
    # fixes (a property name, a literal) may be split into other tokens (llguidance: the canonical
    # split only; XGrammar: any) and in the whitespace JSON may have (aipc's llguidance backends: one
    # line; XGrammar: any), which changes greedy tokens without either being wrong
    cases = {"json_schema": Constraint.json_schema({"type": "integer", "minimum": 0, "maximum": 99999}), "regex": Constraint("regex", REGEX),
             "grammar": Constraint("grammar", 'root ::= [A-Z] [a-z ]{1,30} "."')}
    for kind in backend_info.capabilities.constraints:
        want_text, want, _ = run_raw(reference, "Describe a person.", max_new_tokens=24, constraint=cases[kind])
        text, got, _ = run_raw(model, "Describe a person.", max_new_tokens=24, constraint=cases[kind])
        n = min(len(got), len(want))  # a stream may or may not carry the final EOS id
        assert got[:n] == want[:n] and abs(len(got) - len(want)) <= 1 and text == want_text, (
            f"under the {kind} constraint the greedy output differs from the reference: {text!r} {got} vs {want_text!r} {want}")


def test_unclaimed_constraint_kinds_are_refused(default_model, backend_info):
    """The core refuses a kind the backend does not claim: never silently unconstrained text."""
    missing = [k for k in ("json_schema", "regex", "grammar") if k not in backend_info.capabilities.constraints]
    if not missing:
        pytest.skip("every constraint kind is claimed")
    cases = {"json_schema": Constraint.json(), "regex": Constraint("regex", "a+"), "grammar": Constraint("grammar", GRAMMAR)}
    with pytest.raises(InvalidConfigError):
        default_model.complete("Hello", max_new_tokens=4, constraint=cases[missing[0]])
