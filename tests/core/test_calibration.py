"""Calibration text for data-aware quantization (aipc.calibration): from the model itself, from a
file, or named for the runtime's own loader; cached, seeded, recorded."""

from __future__ import annotations

import json

import pytest

from aipc import calibration
from aipc.errors import InvalidConfigError
from aipc.testing import tiny_phi3_cached


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIPC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_self_generated_is_the_models_chat_text_seeded_and_cached(home, monkeypatch):
    folder = tiny_phi3_cached(0)
    first = calibration.resolve("self", folder, samples=3, seed=1)
    assert first.name == "self" and len(first.texts) == 3
    # chat-templated prompts, each followed by the model's own answer
    assert all(calibration.PROMPTS[i] in text for i, text in enumerate(first.texts))
    assert all(len(text) > len(calibration.PROMPTS[i]) + 20 for i, text in enumerate(first.texts))
    assert first.record == {"dataset": "self", "samples": 3, "sha256": first.record["sha256"], "seed": 1,
                            "new_tokens": calibration.NEW_TOKENS}
    assert len(list((home / "calibration").glob("*.json"))) == 1

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(calibration, "_generate", no_generation)
    again = calibration.resolve("self", folder, samples=3, seed=1)
    assert again.texts == first.texts and again.record == first.record
    monkeypatch.undo()
    monkeypatch.setenv("AIPC_HOME", str(home))
    other = calibration.resolve("self", folder, samples=3, seed=2)
    assert other.texts != first.texts and other.record["sha256"] != first.record["sha256"]


def test_text_and_jsonl_files(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("first sample\nstill the first\n\nsecond sample\n\n\n", encoding="utf-8")
    got = calibration.resolve(str(text), tmp_path)
    assert got.texts == ["first sample\nstill the first", "second sample"]
    assert got.record["dataset"] == "calib.txt" and got.record["samples"] == 2
    lines = tmp_path / "calib.jsonl"
    lines.write_text(json.dumps({"text": "a"}) + "\n\n" + json.dumps({"text": "b"}) + "\n", encoding="utf-8")
    assert calibration.resolve(str(lines), tmp_path, samples=1).texts == ["a"]


@pytest.mark.parametrize("content, message", [
    ("\n\n  \n", "holds no text"),
    ('{"text": "a"}\nnot json\n', "calib.jsonl:2"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    name = "calib.jsonl" if "json" in content else "calib.txt"
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(InvalidConfigError, match=message):
        calibration.resolve(str(tmp_path / name), tmp_path)


def test_missing_file_and_empty_spec(tmp_path):
    with pytest.raises(InvalidConfigError, match="cannot read calibration file"):
        calibration.resolve(str(tmp_path / "nope.txt"), tmp_path)
    with pytest.raises(InvalidConfigError, match="dataset is empty"):
        calibration.resolve(" ", tmp_path)


def test_a_dataset_name_is_left_to_the_runtime(tmp_path):
    got = calibration.resolve("wikitext2", tmp_path, samples=16)
    assert got.texts is None and got.record == {"dataset": "wikitext2", "samples": 16}
