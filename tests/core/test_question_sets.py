"""The question sets of benchmarks/questions/ (issue 16): the eval set is kept apart from everything
the defaults are tuned on (the tuning set, the calibration prompts), and every entry is well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aipc.calibration import PROMPTS
from aipc.conformance.questions import QUESTIONS
from aipc.conformance.support import AGREEMENT_PROMPTS

FOLDER = Path(__file__).resolve().parents[2] / "benchmarks" / "questions"


def load(name: str) -> list[tuple[str, str]]:
    return [tuple(entry) for entry in json.loads((FOLDER / f"{name}.json").read_text(encoding="utf-8"))["questions"]]


def norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


TUNING = list(QUESTIONS) + load("tuning")
EVAL = load("eval")


@pytest.mark.parametrize("questions", [TUNING, EVAL], ids=["tuning", "eval"])
def test_entries_are_questions_with_a_pattern_and_no_repeats(questions):
    assert all(isinstance(q, str) and q.endswith("?") and isinstance(p, str) for q, p in questions)
    for _, pattern in questions:
        re.compile(pattern)
    texts = [norm(q) for q, _ in questions]
    assert len(set(texts)) == len(texts), sorted(t for t in texts if texts.count(t) > 1)


def test_eval_is_kept_apart_from_what_is_tuned_on():
    tuned = {norm(q) for q, _ in TUNING} | {norm(p) for p in (*PROMPTS, *AGREEMENT_PROMPTS)}
    shared = [q for q, _ in EVAL if norm(q) in tuned]
    assert not shared, f"eval questions also tuned on: {shared}"
    assert len(EVAL) >= 40  # the floor for the evaluation set


def test_tuning_questions_are_not_calibration_prompts():
    prompts = {norm(p) for p in PROMPTS}
    assert not [q for q, _ in TUNING if norm(q) in prompts]
