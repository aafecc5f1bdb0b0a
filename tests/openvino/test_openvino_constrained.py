"""Constrained output on the openvino backend: OpenVINO GenAI's own ``StructuredOutputConfig``
(XGrammar inside ``LLMPipeline.generate``), on the CPU.

The real SmolLM2-135M int4 answers under JSON schemas (validated with ``jsonschema``), a regex and
a GBNF grammar; the tiny Phi-3 at fp32 gives the reference backend's greedy ids and text under
constraints where XGrammar and llguidance (the reference's library) allow the same tokens;
constraints XGrammar refuses are one-line InvalidConfigErrors; a constrained request on a kept
chat (prefix reuse) gives a cold run's tokens and leaves the kept state usable.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

import aipc
from aipc.conformance.support import run_raw
from aipc.conformance.support import CASE_REGEX as REGEX
from aipc.conformance.support import NAMED_SCHEMAS as SCHEMAS, check_regex_and_grammar_answers, check_schema_answer
from aipc.constraints import Constraint
from aipc.errors import InvalidConfigError
from aipc.plugins import registry
from aipc.types import GenerationConfig

SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def smollm2_int4(smollm2):
    return aipc.load(str(smollm2), backend="openvino", precision="int4", device="CPU")


def test_capabilities_declare_every_kind():
    assert registry().get("openvino").info.capabilities.constraints == ("json_schema", "regex", "grammar")


@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_answers_parse_and_validate(smollm2_int4, name):
    check_schema_answer(smollm2_int4, name, SYSTEM)


def test_regex_and_gbnf_grammar_outputs_match(smollm2_int4):
    check_regex_and_grammar_answers(smollm2_int4)


def test_ignore_eos_ends_where_the_constraint_is_complete(smollm2_int4):
    """Once the grammar is complete XGrammar allows only EOS, which ignore_eos (min_new_tokens)
    would forbid; under a constraint the output ends there, with finish_reason stop."""
    prompt, schema = SCHEMAS["bounded"]
    text = smollm2_int4.complete(prompt, max_new_tokens=100, ignore_eos=True, constraint=Constraint.json_schema(schema))
    assert smollm2_int4.usage.finish_reason == "stop" and smollm2_int4.usage.generated_tokens < 100, text
    jsonschema.validate(json.loads(text), schema)


def test_a_cut_by_max_new_tokens_is_reported(smollm2_int4):
    prompt, schema = SCHEMAS["required"]
    text = smollm2_int4.complete(prompt, max_new_tokens=6, constraint=Constraint.json_schema(schema))
    assert smollm2_int4.usage.finish_reason == "length" and smollm2_int4.usage.generated_tokens == 6, text


#: Constraints where XGrammar and llguidance allow the same tokens at every step. They differ
#: where the text is forced: llguidance (the reference) allows only the canonical tokenization of
#: forced text (a property name, a literal), XGrammar any tokenization; and XGrammar's JSON
#: whitespace has no "\r". So schemas with property names are compared for validity only.
TINY_CONSTRAINTS = {
    "schema-integer": Constraint.json_schema({"type": "integer", "minimum": 0, "maximum": 1000}),
    "schema-any-integer": Constraint.json_schema({"type": "integer"}),
    "regex-conformance": Constraint("regex", r"(Yes|No), because [a-z ]{1,40}\."),
    "regex-words": Constraint("regex", r"[a-z]{2,8}( [a-z]{2,8}){0,3}"),
    "grammar-words": Constraint("grammar", 'root ::= word (" " word)* "."\nword ::= [a-z]+\n'),
    "grammar-name-number": Constraint("grammar", 'root ::= [A-Z] [a-z]+ " " [0-9]+\n'),
}


@pytest.mark.parametrize("name", TINY_CONSTRAINTS)
@pytest.mark.parametrize("prompt", ["Describe a person.", "What is 2 + 2?"])
def test_fp32_greedy_under_a_constraint_equals_the_reference(models, reference, name, prompt):
    """The tiny (random) Phi-3 at fp32: the same ids (the final EOS too) and text as the
    transformers backend under the same constraint (XGrammar here, llguidance there)."""
    constraint = TINY_CONSTRAINTS[name]
    want_text, want, _ = run_raw(reference, prompt, max_new_tokens=24, constraint=constraint)
    text, got, _ = run_raw(models("fp32"), prompt, max_new_tokens=24, constraint=constraint)
    assert got == want and text == want_text
    free = run_raw(models("fp32"), prompt, max_new_tokens=24)[1]
    assert got != free, "the constraint changed nothing: pick another"


@pytest.mark.parametrize(("constraint", "says"), [
    (Constraint("regex", "a(?=b)"), "Lookahead is not supported"),  # valid in Python's re, not in XGrammar
    (Constraint("grammar", "root ::= item\n"), 'Rule "item" is not defined'),
])
def test_a_constraint_the_runtime_refuses_is_a_one_line_error(smollm2_int4, constraint, says):
    with pytest.raises(InvalidConfigError) as caught:
        smollm2_int4.complete("Hello", max_new_tokens=4, constraint=constraint)
    message = str(caught.value)
    assert says in message and "\n" not in message and len(message) < 320 and "xgrammar-src" not in message, message
    assert smollm2_int4.complete("Hello", max_new_tokens=4, constraint=Constraint("regex", "[a-z]+"))


@pytest.mark.parametrize(("schema", "says"), [
    ({"type": "object", "properties": {"x": {"type": "number", "minimum": 0, "maximum": 1}}}, "minimum"),
    ({"type": "array", "items": {"type": "integer", "multipleOf": 5}}, "multipleOf"),
])
def test_schema_bounds_xgrammar_ignores_are_refused(smollm2_int4, schema, says):
    """XGrammar (2026.4.1) does not enforce these: refused, never run with the bound dropped."""
    with pytest.raises(InvalidConfigError, match=says):
        smollm2_int4.complete("Hello", max_new_tokens=4, constraint=Constraint.json_schema(schema))
    integer = {"type": "integer", "minimum": 0, "maximum": 9}
    assert 0 <= int(smollm2_int4.complete("Pick a digit.", max_new_tokens=8, constraint=Constraint.json_schema(integer))) <= 9


def test_a_constrained_request_on_a_kept_chat_equals_a_cold_run(smollm2):
    """Prefix reuse: a constrained request runs on the slot's kept chat (prefilling only what is
    new) and gives a cold run's tokens; the next free request still reuses the kept state."""
    warm = aipc.load(str(smollm2), backend="openvino", precision="fp16", device="CPU", cache_slots=1)
    cold = aipc.load(str(smollm2), backend="openvino", precision="fp16", device="CPU", cache_slots=0)
    prompt = warm.format_chat([{"role": "system", "content": SYSTEM},
                               {"role": "user", "content": "What is the capital of France?"}])

    def turn(model, constraint=None, tokens=24):
        model.loaded.cached_tokens = -1
        chunks = list(model.raw_stream(prompt, GenerationConfig(max_new_tokens=tokens, constraint=constraint)))
        return "".join(c.text for c in chunks), [i for c in chunks for i in c.ids], model.loaded.cached_tokens

    _, free, reused = turn(warm)
    assert reused == 0
    for constraint in (Constraint("regex", REGEX), Constraint.json_schema(SCHEMAS["nested"][1])):
        text, ids, reused = turn(warm, constraint, 80)
        want_text, want, _ = turn(cold, constraint, 80)
        assert reused > 0 and (ids, text) == (want, want_text), (reused, text, want_text)
    _, after, reused = turn(warm)
    assert after == free and reused > 0
