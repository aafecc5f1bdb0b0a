"""The real SmolLM2 behind ``aipc serve`` (the default model), asked through the openai client."""

from __future__ import annotations

import pytest
from serve_support import running_server

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2):  # smollm2: fetched and converted into the cache beforehand
    with running_server(tmp_path_factory, "--backend", "transformers") as server:
        yield server


def test_the_default_model_is_served(server):
    assert [m.id for m in server.client().models.list().data] == [MODEL]


def test_smollm2_answers_paris(server):
    answer = server.client().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=64)
    assert "Paris" in answer.choices[0].message.content, answer
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens < 64


def test_smollm2_streams_paris(server):
    stream = server.client().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=64, stream=True,
                                                     stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3 and "Paris" in "".join(pieces)
    assert chunks[-1].usage.completion_tokens >= len(pieces)
