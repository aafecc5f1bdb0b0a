"""Constrained output on the default engine, on the CPU stand-in (NPU-EMU): OpenVINO GenAI's
``StructuredOutputConfig`` (XGrammar) in the NPU pipeline. Its greedy ids under a constraint
equal the plain CPU LLMPipeline's under the same StructuredOutputConfig on the same IR; output
matches the constraint; XGrammar's refusals are one-line InvalidConfigErrors. NPU-EMU runs the
NPU pipeline's logic on the CPU: not verified on an NPU."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from aipc.constraints import Constraint
from aipc.errors import InvalidConfigError
from aipc.plugins import registry
from aipc.types import GenerationConfig
from npu_support import needs_engine, raw

pytestmark = needs_engine("openvino")
ENGINE = "openvino"

#: no free strings: on the random tiny model XGrammar let a control character into a JSON string
#: (byte-level tokens; seen on the CPU pipeline too), which real models do not pick
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "n"],
          "properties": {"city": {"enum": ["Paris", "Rome"]}, "n": {"type": "integer", "minimum": 1, "maximum": 9}}}
CONSTRAINTS = {
    "schema": Constraint.json_schema(SCHEMA),
    "regex": Constraint("regex", r"(Yes|No), because [a-z ]{1,40}\."),
    "grammar": Constraint("grammar", 'root ::= ("yes" | "no") " " [0-9]+\n'),
}


def test_the_default_engine_declares_every_kind():
    assert registry().get("npu").info.capabilities.constraints == ("json_schema", "regex", "grammar")


@pytest.fixture(scope="module")
def cpu_constrained():
    """``cpu_constrained(model, prompt, constraint)`` -> ids of the plain CPU LLMPipeline (f32) on
    the same artifact under the same generation config."""
    import openvino_genai

    from aipc_openvino_common import genai

    pipes = {}

    def greedy(model, prompt: str, constraint) -> list[int]:
        folder = str(model.artifact_dir)
        if folder not in pipes:
            pipes[folder] = openvino_genai.LLMPipeline(folder, "CPU", INFERENCE_PRECISION_HINT="f32")
        pipe = pipes[folder]
        config = genai.generation_config(GenerationConfig(max_new_tokens=40, constraint=constraint),
                                         genai.eos_ids(pipe), 40, native_stop_strings=False)
        ids = pipe.get_tokenizer().encode(model.format_prompt(prompt), add_special_tokens=False)
        return [int(i) for i in pipe.generate(ids, config).tokens[0]]

    return greedy


@pytest.mark.parametrize("kind", CONSTRAINTS)
def test_greedy_under_a_constraint_equals_the_cpu_pipeline(npu_models, cpu_constrained, kind):
    model = npu_models(ENGINE, "fp16")
    constraint = CONSTRAINTS[kind]
    for prompt in ("Describe a person.", "Is Paris in France?"):
        text, got, _ = raw(model, prompt, max_new_tokens=40, constraint=constraint)
        assert got == cpu_constrained(model, prompt, constraint), f"{kind} {prompt!r}: {text!r}"
        if kind == "schema" and got[-1] == model.loaded.runtime.eos[0]:  # complete: ended on EOS
            jsonschema.validate(json.loads(text), SCHEMA)
        elif kind == "regex":
            assert re.fullmatch(CONSTRAINTS["regex"].value, text), text
        elif kind == "grammar":
            assert re.fullmatch(r"(yes|no) [0-9]+", text), text


def test_a_regex_xgrammar_refuses_is_a_one_line_error(npu_models):
    model = npu_models(ENGINE, "fp16")
    with pytest.raises(InvalidConfigError) as caught:
        model.complete("Hello", max_new_tokens=4, constraint=Constraint("regex", "a(?=b)"))
    message = str(caught.value)
    assert "Lookahead is not supported" in message and "\n" not in message, message
    assert re.fullmatch("[a-z]+", model.complete("Hello", max_new_tokens=4, constraint=Constraint("regex", "[a-z]+")))
