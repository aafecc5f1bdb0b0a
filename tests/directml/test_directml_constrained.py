"""Constrained output on the directml backend: onnxruntime-genai's own guidance
(``GeneratorParams.set_guidance``, llguidance inside the runtime), on the CPU provider.

The real SmolLM2-135M int4 build answers under JSON schemas (validated with ``jsonschema``), a
regex and a GBNF grammar; the tiny Phi-3 at fp32 gives the reference backend's greedy tokens
under the same constraints (the reference masks with the Python llguidance); constraints the
runtime's compiler refuses are one-line InvalidConfigErrors; a constrained request never runs on
a kept (unguided) generator of the prefix cache, and leaves that generator as it was.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from aipc.conformance.support import CASE_REGEX as REGEX
from aipc.conformance.support import NAMED_SCHEMAS as SCHEMAS, check_regex_and_grammar_answers, check_schema_answer
from aipc.constraints import Constraint
from aipc.errors import InvalidConfigError
from aipc.plugins import registry
from aipc.types import GenerationConfig

from directml_support import BACKEND, SYSTEM


def test_capabilities_declare_every_kind():
    assert registry().get(BACKEND).info.capabilities.constraints == ("json_schema", "regex", "grammar")


@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_answers_parse_and_validate(smollm2_int4, name):
    check_schema_answer(smollm2_int4, name)


def test_regex_and_gbnf_grammar_outputs_match(smollm2_int4):
    check_regex_and_grammar_answers(smollm2_int4)


def test_ignore_eos_ends_where_the_constraint_is_complete(smollm2_int4):
    """Guidance allows only EOS once the constraint is complete; ignore_eos (onnxruntime-genai's
    min_length) would forbid that too, so under a constraint the output ends there."""
    prompt, schema = SCHEMAS["bounded"]
    text = smollm2_int4.complete(prompt, max_new_tokens=100, ignore_eos=True, constraint=Constraint.json_schema(schema))
    assert smollm2_int4.usage.finish_reason == "stop" and smollm2_int4.usage.generated_tokens < 100
    jsonschema.validate(json.loads(text), schema)


TINY_CONSTRAINTS = {
    "schema": Constraint.json_schema({"type": "object", "required": ["a", "b"],
                                      "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}}}),
    "any-json": Constraint.json(),
    "regex": Constraint("regex", r"[a-z]{2,8}( [a-z]{2,8}){0,3}"),
    "grammar": Constraint("grammar", 'root ::= ("yes" | "no") " " [0-9]+\n'),
}


def _raw(model, constraint, tokens=40):
    chunks = list(model.raw_stream(model.format_prompt("Give me a person.", SYSTEM),
                                   GenerationConfig(max_new_tokens=tokens, constraint=constraint)))
    return "".join(c.text for c in chunks), [i for c in chunks for i in c.ids]


@pytest.mark.parametrize("name", TINY_CONSTRAINTS)
def test_fp32_greedy_under_a_constraint_equals_the_reference(models, reference, name):
    """The tiny (random) Phi-3 at fp32: the same ids and text as the transformers backend under
    the same constraint (different llguidance builds, one in the runtime, one in Python)."""
    constraint = TINY_CONSTRAINTS[name]
    want_text, want = _raw(reference, constraint)
    text, got = _raw(models("fp32"), constraint)
    assert got == want and text == want_text
    free = _raw(models("fp32"), None)[1]
    assert got != free, "the constraint changed nothing: pick another"


@pytest.mark.parametrize(("constraint", "says"), [
    (Constraint("regex", "a(?=b)"), "look-around"),  # valid in Python's re, not in llguidance
    (Constraint.json_schema({"type": "object", "properties": {"a": {"$ref": "#/defs/nope"}}}), "/defs/nope"),
    (Constraint("grammar", "root ::= item\n"), "item"),
])
def test_a_constraint_the_runtime_refuses_is_a_one_line_error(smollm2_int4, constraint, says):
    with pytest.raises(InvalidConfigError) as caught:
        smollm2_int4.complete("Hello", max_new_tokens=4, constraint=constraint)
    message = str(caught.value)
    assert says in message and "\n" not in message and len(message) < 320, message
    assert smollm2_int4.complete("Hello", max_new_tokens=4, constraint=Constraint("regex", "[a-z]+"))


def test_a_constrained_request_gets_a_generator_of_its_own(smollm2_int4_exact_reuse):
    """The kept generator of a conversation (prefix reuse) has no guidance: a constrained request
    must not run on it, and must leave it as it was for the next free request."""
    model = smollm2_int4_exact_reuse
    prompt = model.format_chat([{"role": "system", "content": SYSTEM},
                                {"role": "user", "content": "What is the capital of France?"}])

    def turn(constraint=None):
        model.loaded.cached_tokens = -1
        chunks = list(model.raw_stream(prompt, GenerationConfig(max_new_tokens=12, constraint=constraint)))
        return "".join(c.text for c in chunks), [i for c in chunks for i in c.ids], model.loaded.cached_tokens

    _, free, _ = turn()
    _, again, reused = turn()
    assert again == free and reused > 0, "prefix reuse is off: this test needs it"
    text, _, reused = turn(Constraint("regex", REGEX))
    assert reused == 0 and re.fullmatch(REGEX, text), (reused, text)
    _, after, reused = turn()
    assert after == free and reused > 0
