"""The main job end to end with the real SmolLM2 (fetched from PyPI, converted from GGUF)."""

import json

import aipc


def test_main_job_answers_the_capital_question(aipc_cli):
    result = aipc_cli("run", "What is the capital of France?", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "smollm2-135m-instruct" and data["backend"] == "transformers"
    assert "Paris" in data["text"], data["text"]
    assert data["usage"]["finish_reason"] == "stop" and data["usage"]["generated_tokens"] < 64


def test_python_api_streams_chats_and_measures(smollm2):
    model = aipc.load("smollm2-135m-instruct", backend="transformers")
    pieces = list(model.generate("What is the capital of France?"))
    assert len(pieces) > 3 and "Paris" in "".join(pieces)
    usage = model.usage
    assert usage.prompt_tokens > 5 and usage.generated_tokens >= len(pieces) - 1
    assert 0 < usage.time_to_first_token_s < usage.total_s and usage.decode_tokens_per_s > 0
    conversation = [{"role": "user", "content": "What is the capital of France?"},
                    {"role": "assistant", "content": "".join(pieces)},
                    {"role": "user", "content": "And what is the capital of Italy?"}]
    assert "Rome" in "".join(model.chat(conversation, max_new_tokens=32))


def test_stop_strings_and_token_limits_through_the_api(smollm2):
    model = aipc.load("smollm2-135m-instruct", backend="transformers")
    assert model.complete("What is the capital of France?", stop=["Paris"]).rstrip().endswith("is")
    assert model.usage.finish_reason == "stop"
    model.complete("Write a long story about a dragon.", max_new_tokens=5)
    assert model.usage.generated_tokens == 5 and model.usage.finish_reason == "length"
