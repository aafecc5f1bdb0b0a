"""Per-turn time to first token of a growing chat on the directml backend: prefix reuse (a kept
generator rewound and appended to) against ``cache_slots=0`` (every prompt prefilled whole), and
against onnxruntime-genai's own multi-turn loop (examples/python/model-chat.py: one generator,
``append_tokens`` of each new user turn) on the same artifact.

    python plugins/directml/tools/bench_prefix.py [--threads 1] [--turns 8] [--tokens 96]

SmolLM2-135M-Instruct int4 (CPU build). Each turn generates exactly ``--tokens`` tokens
(ignore_eos), greedy. The three runs alternate turn by turn in one process, so a busy machine
slows them alike: compare the columns of one run, not figures across runs. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import time

import aipc
from aipc.sources import DEFAULT_MODEL, resolve

SYSTEM = "You are a helpful AI assistant."
QUESTIONS = ("Tell me about the history of Paris.", "What are its most famous museums?",
             "Which one should I visit first, and why?", "How do I get there from the airport?",
             "What should I eat nearby?", "Give me a plan for a rainy afternoon.",
             "What about the evening?", "Summarise everything in a few lines.", "Thanks! Anything else?",
             "One more tip, please.")


def og_loop(folder, threads: int, turns: int, tokens: int):
    """onnxruntime-genai's own multi-turn path: yields (prompt tokens so far, TTFT) per turn."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=8192, min_length=8192, do_sample=False)  # model-chat's default: the context
    generator = og.Generator(model, params)
    head = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    for turn in range(turns):
        user = f"<|im_start|>user\n{QUESTIONS[turn]}<|im_end|>\n<|im_start|>assistant\n"
        text = ("<|im_end|>\n" if turn else head) + user
        started = time.perf_counter()
        generator.append_tokens(tokenizer.encode(text))
        generator.generate_next_token()
        ttft = time.perf_counter() - started
        prompt = generator.token_count() - 1
        for _ in range(tokens - 1):
            generator.generate_next_token()
        yield prompt, ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    folder = aipc.quantize(str(resolve(DEFAULT_MODEL).hf_dir), backend="directml", precision="int4", device="CPU")
    options = {"threads": str(args.threads)}
    warm = aipc.load(str(folder), backend="directml", device="CPU", options=options, cache_slots=1)
    cold = aipc.load(str(folder), backend="directml", device="CPU", options=options, cache_slots=0)
    own = og_loop(folder, args.threads, args.turns, args.tokens)
    messages = [{"role": "system", "content": SYSTEM}]
    print("| turn | prompt tokens | reused | TTFT reuse | TTFT cache_slots=0 | og loop prompt tokens | TTFT og loop |")
    print("|---|---|---|---|---|---|---|")
    for turn in range(args.turns):
        messages.append({"role": "user", "content": QUESTIONS[turn]})
        row = []
        for model in (warm, cold):
            answer = "".join(model.chat(messages, max_new_tokens=args.tokens, ignore_eos=True))
            usage = model.usage
            row.append((usage.prompt_tokens, usage.cached_tokens, usage.time_to_first_token_s, answer))
        og_prompt, og_ttft = next(own)
        messages.append({"role": "assistant", "content": row[0][3]})
        print(f"| {turn + 1} | {row[0][0]} | {row[0][1]} | {row[0][2] * 1000:.0f} ms | {row[1][2] * 1000:.0f} ms "
              f"| {og_prompt} | {og_ttft * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
