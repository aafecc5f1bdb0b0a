"""Prefix reuse behind ``aipc serve``: clients resend the whole history (no session ids) and the
server prefills only what is new, reporting OpenAI's ``usage.prompt_tokens_details.cached_tokens``.

Two servers of the tiny Phi-3 on the reference backend: one keeping two conversations
(``--cache-slots 2``), one with reuse off (``--cache-slots 0``), whose greedy answers are the cold
runs the reused ones must equal.
"""

from __future__ import annotations

import pytest
from serve_support import linked_model, running_server

MODEL = "tiny-phi3"
LONG = {"ignore_eos": True}  # extra_body: run to max_tokens


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, tiny_phi3):
    return linked_model(tmp_path_factory, tiny_phi3, MODEL)


@pytest.fixture(scope="module")
def reusing(tmp_path_factory, model_path):
    with running_server(tmp_path_factory, "--model", str(model_path), "--backend", "transformers",
                        "--cache-slots", "2") as server:
        yield server


@pytest.fixture(scope="module")
def cold(tmp_path_factory, model_path):
    with running_server(tmp_path_factory, "--model", str(model_path), "--backend", "transformers",
                        "--cache-slots", "0") as server:
        yield server


def ask(server, messages, max_tokens=6, **kwargs):
    return server.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                   extra_body=LONG, **kwargs)


def cached(answer) -> int:
    return answer.usage.prompt_tokens_details.cached_tokens


def turn(messages, answer, text):
    return [*messages, {"role": "assistant", "content": answer.choices[0].message.content},
            {"role": "user", "content": text}]


def test_the_next_turn_reuses_the_history_and_answers_as_a_cold_run(reusing, cold):
    first = [{"role": "user", "content": "Tell me about the sea."}]
    one = ask(reusing, first)
    assert cached(one) == 0
    second = turn(first, one, "And the mountains?")
    two = ask(reusing, second)
    assert one.usage.prompt_tokens - 2 <= cached(two) < two.usage.prompt_tokens, two.usage
    baseline = ask(cold, second)
    assert cached(baseline) == 0
    assert two.choices[0].message.content == baseline.choices[0].message.content
    # streamed, the usage chunk says the same; regenerating the same answer reuses all but one token
    chunks = list(ask(reusing, second, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == two.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == two.usage.prompt_tokens - 1
    assert f"cached_tokens={two.usage.prompt_tokens - 1}" in reusing.log()
    status = reusing.model_status(MODEL)
    assert status["last_cached_tokens"] == two.usage.prompt_tokens - 1


def test_completions_report_cached_tokens(reusing, cold):
    client = reusing.client()
    prompt = "Once upon a time there was a lighthouse"
    one = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, extra_body=LONG)
    longer = prompt + one.choices[0].text + " and then"
    raw = reusing.http().post("/v1/completions", json={"model": MODEL, "prompt": longer, "max_tokens": 4, **LONG})
    usage = raw.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0, usage
    baseline = cold.http().post("/v1/completions", json={"model": MODEL, "prompt": longer, "max_tokens": 4, **LONG})
    assert baseline.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert raw.json()["choices"][0]["text"] == baseline.json()["choices"][0]["text"]


def test_two_clients_taking_turns_keep_their_reuse(reusing, cold):
    talks = {name: [{"role": "user", "content": f"{name}, tell me a story about {topic}."}]
             for name, topic in (("Ann", "a cat"), ("Bob", "an old ship"))}
    last: dict[str, int] = {}
    for round_ in range(3):
        for name, messages in talks.items():
            answer = ask(reusing, messages)
            if round_:
                # the history sent before is still held: neither client evicted the other
                assert cached(answer) >= last[name] - 2, (name, round_, answer.usage)
                assert answer.choices[0].message.content == ask(cold, messages).choices[0].message.content
            last[name] = answer.usage.prompt_tokens
            talks[name] = turn(messages, answer, f"Go on ({round_}).")


def test_a_client_leaving_mid_stream_leaves_the_next_request_correct(reusing, cold):
    messages = [{"role": "user", "content": "Count to a thousand."}]
    before = reusing.model_status(MODEL)["cancelled"]
    stream = reusing.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=2000, stream=True,
                                                      extra_body=LONG)
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    reusing.wait_for(lambda h: h["models"][MODEL]["cancelled"] > before and not h["models"][MODEL]["running"],
                     timeout=30, what="the cancelled generation")
    again = ask(reusing, messages, max_tokens=8)
    assert cached(again) > 0 and again.choices[0].message.content == ask(cold, messages, max_tokens=8).choices[0].message.content
    follow = turn(messages, again, "Slower, please.")
    assert ask(reusing, follow).choices[0].message.content == ask(cold, follow).choices[0].message.content
    assert "Traceback" not in reusing.log()


def test_bad_cache_slots_are_refused_before_starting(aipc_cli):
    result = aipc_cli("serve", "--port", "9", "--cache-slots", "-1", timeout=60)
    assert result.returncode != 0 and "--cache-slots must be a whole number >= 0" in result.stderr, result.stderr
    assert "Uvicorn running" not in result.stderr and "Traceback" not in result.stderr
