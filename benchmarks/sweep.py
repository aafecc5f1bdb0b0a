"""Settings sweep for one backend and precision: speed and accuracy of each variant, side by side.

    python benchmarks/sweep.py -b openvino -p int4 --threads 1 --json sweep-openvino.json \
        --variant "" --variant ratio=1.0 --variant ratio=1.0,group_size=64

Speed comes from ``aipc bench``'s measurement (aipc.bench.run: exact prompt, forced length,
interleaved runs, medians). Accuracy is measured on held-out chat prompts, none of which the
conformance suite or the defaults' tuning used: the greedy answer of each variant against the
reference backend's (transformers fp32) for the same prompt, as first-token agreement, the mean
length of the common token prefix, and whether the answer holds the expected fact. Beside it,
what the conformance suite asks of a quantized model: the first answer token on its 10 prompts
(with the walkthrough's system prompt, and without one) and "Paris". Run it in the backend's
tox environment (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from pathlib import Path

import aipc
from aipc import bench
from aipc.conformance.support import AGREEMENT_PROMPTS, SYSTEM, run_raw
from aipc.sources import DEFAULT_MODEL

#: held-out questions and a pattern a right answer contains
HELD_OUT = (
    ("What is the capital of Italy?", r"\bRome\b"),
    ("What is the capital of Japan?", r"\bTokyo\b"),
    ("How many days are in a week?", r"\b(7|seven)\b"),
    ("What color is the sky on a clear day?", r"\bblue\b"),
    ("At what temperature in Celsius does water boil?", r"\b100\b"),
    ("Who wrote Romeo and Juliet?", r"Shakespeare"),
    ("What is the opposite of hot?", r"\bcold\b"),
    ("How many legs does a spider have?", r"\b(8|eight)\b"),
    ("What do bees make?", r"\bhoney\b"),
    ("What is the chemical symbol for gold?", r"\bAu\b"),
    ("What is the freezing point of water in Fahrenheit?", r"\b32\b"),
    ("Which planet is known as the Red Planet?", r"\bMars\b"),
)


def greedy_answer(model: aipc.Model, question: str, tokens: int, system: str | None = SYSTEM) -> tuple[list[int], str]:
    """The first ``tokens`` greedy answer tokens (ids and text) to ``question``, chat-templated."""
    text, ids, _ = run_raw(model, question, system, max_new_tokens=tokens)
    return ids, text


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def accuracy(model: aipc.Model, reference: dict[str, tuple[list[int], str]], tokens: int) -> dict[str, float]:
    first, prefixes, kept, right = 0, [], 0, 0
    for question, pattern in HELD_OUT:
        ids, text = greedy_answer(model, question, tokens)
        ref_ids, ref_text = reference[question]
        first += bool(ids and ref_ids and ids[0] == ref_ids[0])
        prefixes.append(common_prefix(ids, ref_ids))
        correct = bool(re.search(pattern, text, re.IGNORECASE))
        right += correct
        kept += correct and bool(re.search(pattern, ref_text, re.IGNORECASE))
    # what the conformance suite asks of a quantized model (first answer token on its prompts, Paris)
    suite = sum(greedy_answer(model, q, 1)[0] == reference[q][0][:1] for q in AGREEMENT_PROMPTS)
    bare = sum(greedy_answer(model, q, 1, None)[0] == reference[(q, None)][0] for q in AGREEMENT_PROMPTS)
    paris = "Paris" in greedy_answer(model, "What is the capital of France?", 16)[1]
    return {"first_token_agreement": round(first / len(HELD_OUT), 3),
            "mean_common_prefix": round(statistics.mean(prefixes), 2),
            "right_answers": right, "reference_right_kept": kept,
            "suite_first_token": f"{suite}/{len(AGREEMENT_PROMPTS)}", "suite_paris": paris,
            "no_system_first_token": f"{bare}/{len(AGREEMENT_PROMPTS)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", "-b", required=True)
    parser.add_argument("--precision", "-p", default="int4")
    parser.add_argument("--device", "-d", default="CPU")
    parser.add_argument("--variant", action="append", default=[], help="K=V[,K=V] options of one variant (repeatable)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--answer-tokens", type=int, default=24, help="greedy answer length for accuracy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["AIPC_NUM_THREADS"] = str(args.threads)
    combos, notes = bench.combinations((args.backend,), (args.precision,), args.device, tuple(args.variant or [""]))
    for note in notes:
        print(note)

    def progress(message: str, fraction: float | None = None) -> None:
        print(message, flush=True)

    report = bench.run(args.model, combos, args.prompt_tokens, args.new_tokens, args.runs, 1, None, False, progress)
    reference_model = aipc.load(args.model, backend="transformers", precision="fp32")
    reference = {q: greedy_answer(reference_model, q, args.answer_tokens)
                 for q in [q for q, _ in HELD_OUT] + list(AGREEMENT_PROMPTS)}
    reference.update({(q, None): greedy_answer(reference_model, q, 1, None) for q in AGREEMENT_PROMPTS})
    reference_model.close()
    right = sum(bool(re.search(p, reference[q][1], re.IGNORECASE)) for q, p in HELD_OUT)
    print(f"reference (transformers fp32) answers {right}/{len(HELD_OUT)} held-out questions right")
    for combo, row in zip(combos, report["results"]):
        model = aipc.load(args.model, backend=combo.backend, precision=combo.precision, device=combo.device,
                          options=list(combo.options))
        row.update(accuracy(model, reference, args.answer_tokens))
        model.close()
    report["reference_right_answers"] = right
    report["held_out"] = [q for q, _ in HELD_OUT]
    width = max(len(",".join(row["options"]) or "(default)") for row in report["results"]) + 2
    print(f"\n{'variant':<{width}}{'TTFT ms':>9}{'decode tok/s':>14}{'MB':>7}{'first tok':>11}{'prefix':>8}{'right':>7}"
          f"{'suite':>7}{'Paris':>7}{'bare':>7}")
    for row in report["results"]:
        name = ",".join(row["options"]) or "(default)"
        print(f"{name:<{width}}{row['ttft_ms']:>9}{row['decode_tps']:>14}{row['artifact_mb']:>7}"
              f"{row['first_token_agreement']:>11}{row['mean_common_prefix']:>8}{row['right_answers']:>4}/{len(HELD_OUT)}"
              f"{row['suite_first_token']:>7}{'yes' if row['suite_paris'] else 'no':>7}{row['no_system_first_token']:>7}")
    print(f"{args.threads} thread(s); accuracy against transformers fp32 over {len(HELD_OUT)} held-out prompts, "
          f"{args.answer_tokens} answer tokens")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
