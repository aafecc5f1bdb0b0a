"""Settings sweep for one backend and precision: speed and accuracy of each variant, side by side.

    python benchmarks/sweep.py -b openvino -p int4 --threads 1 --json sweep-openvino.json \
        --variant "" --variant ratio=1.0 --variant ratio=1.0,group_size=64

Speed comes from ``aipc bench``'s measurement (aipc.bench.run: exact prompt, forced length,
interleaved runs, medians), with the quantize time of each variant (blank when its artifact was
already cached). Accuracy is measured on the two question sets of benchmarks/questions/: tuning
(what recipes and defaults may be tuned on) and eval (at least 40 questions kept apart from
everything tuned). Each question is asked greedy, chat-templated with the walkthrough's system
prompt; an answer is right when it matches the question's pattern. "kept" counts the questions
the reference backend (transformers fp32) answers right that the variant still answers right.
Beside it, first answer token agreement and common greedy prefix with the reference, and what the
conformance suite asks of a quantized model: the first answer token on its 10 prompts (with the
walkthrough's system prompt, and without one) and "Paris". Run it in the backend's tox
environment (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import time
from pathlib import Path

import aipc
from aipc import bench
from aipc.conformance.questions import QUESTIONS as TUNING
from aipc.conformance.support import AGREEMENT_PROMPTS, SYSTEM, run_raw
from aipc.sources import DEFAULT_MODEL

def question_set(name: str) -> list[tuple[str, str]]:
    """The tuning set (the suite's questions and benchmarks/questions/tuning.json: what recipes and
    defaults may be tuned on) or the evaluation set of benchmarks/questions/eval.json (kept apart:
    nothing is tuned on it)."""
    path = Path(__file__).parent / "questions" / f"{name}.json"
    listed = [tuple(q) for q in json.loads(path.read_text(encoding="utf-8"))["questions"]]
    return list(TUNING) + listed if name == "tuning" else listed


SETS = {name: question_set(name) for name in ("tuning", "eval")}
# what an accuracy row was measured on: the sets' questions and patterns
SETS_DIGEST = hashlib.sha256(json.dumps(SETS, sort_keys=True).encode()).hexdigest()[:16]


def greedy_answer(model: aipc.Model, question: str, tokens: int, system: str | None = SYSTEM) -> tuple[list[int], str]:
    """The first ``tokens`` greedy answer tokens (ids and text) to ``question``, chat-templated."""
    text, ids, _ = run_raw(model, question, system, max_new_tokens=tokens)
    return ids, text


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def right(pattern: str, text: str) -> bool:
    return bool(re.search(pattern, text, re.IGNORECASE))


def accuracy(model: aipc.Model, reference: dict, tokens: int) -> dict:
    """Per question set: how many of the questions the reference answers right this model still
    answers right (``kept`` of ``reference_right``), its own right answers, first answer token
    agreement and mean common greedy prefix with the reference; then the suite's own measures."""
    row: dict = {}
    for name, questions in SETS.items():
        first, prefixes, kept, own, base, lost = 0, [], 0, 0, 0, []
        for question, pattern in questions:
            ids, text = greedy_answer(model, question, tokens)
            ref_ids, ref_text = reference[question]
            first += bool(ids and ref_ids and ids[0] == ref_ids[0])
            prefixes.append(common_prefix(ids, ref_ids))
            own += right(pattern, text)
            base += right(pattern, ref_text)
            kept += right(pattern, text) and right(pattern, ref_text)
            if right(pattern, ref_text) and not right(pattern, text):
                lost.append(question)
        row[name] = {"questions": len(questions), "reference_right": base, "kept": kept,
                     "kept_share": round(kept / base, 3) if base else None, "right": own,
                     "first_token_agreement": round(first / len(questions), 3),
                     "mean_common_prefix": round(statistics.mean(prefixes), 2), "lost": lost}
    # what the conformance suite asks of a quantized model (first answer token on its prompts, Paris)
    suite = sum(greedy_answer(model, q, 1)[0] == reference[q][0][:1] for q in AGREEMENT_PROMPTS)
    bare = sum(greedy_answer(model, q, 1, None)[0] == reference[(q, None)][0] for q in AGREEMENT_PROMPTS)
    row.update(suite_first_token=f"{suite}/{len(AGREEMENT_PROMPTS)}",
               suite_paris="Paris" in greedy_answer(model, "What is the capital of France?", 16)[1],
               no_system_first_token=f"{bare}/{len(AGREEMENT_PROMPTS)}")
    return row


def reference_answers(model_name: str, tokens: int) -> dict:
    """transformers fp32's greedy answers to both question sets and the suite's prompts, as accuracy() wants them."""
    reference_model = aipc.load(model_name, backend="transformers", precision="fp32")
    asked = [q for questions in SETS.values() for q, _ in questions]
    reference = {q: greedy_answer(reference_model, q, tokens) for q in [*asked, *AGREEMENT_PROMPTS]}
    reference.update({(q, None): greedy_answer(reference_model, q, 1, None) for q in AGREEMENT_PROMPTS})
    reference_model.close()
    return reference


def reference_summary(reference: dict) -> dict:
    """Per question set: how many questions, how many the reference answers right (also printed)."""
    summary = {}
    for name, questions in SETS.items():
        base = sum(right(p, reference[q][1]) for q, p in questions)
        summary[name] = {"questions": len(questions), "right": base}
        print(f"reference (transformers fp32) answers {base}/{len(questions)} {name} questions right")
    return summary


ACCURACY_FIELDS = ("tuning", "eval", "suite_first_token", "suite_paris", "no_system_first_token")


def reusable_accuracy(path: Path, report: dict, tokens: int) -> dict[tuple, dict]:
    """The accuracy rows of an earlier sweep by variant options, if it measured the same model with the
    same runtime versions, CPU, answer length and question sets (else none: another runtime or CPU
    kernel may answer differently)."""
    old = json.loads(path.read_text(encoding="utf-8"))
    same = (old.get("model"), old.get("versions"), old.get("machine", {}).get("cpu"), old.get("answer_tokens", 48),
            old.get("question_sets")) == (
        report.get("model"), report.get("versions"), report["machine"]["cpu"], tokens, SETS_DIGEST)
    if not same:
        print(f"{path}: another model, runtime version, CPU, answer length or question set; its accuracy is not reused")
        return {}
    return {variant_key(row): {k: row[k] for k in ACCURACY_FIELDS}
            for row in old["results"] if all(k in row for k in ACCURACY_FIELDS)}


def artifacts_report(model_name: str, combos: list, progress) -> dict:
    """--accuracy-only: each variant's artifact (quantized, or taken from the cache), its size and
    quantize time, in the report form bench.run gives, without loading a model for speed."""
    from aipc import cache, runtime
    from aipc.plugins import registry

    rows = []
    for combo in combos:
        started = time.perf_counter()
        folder = runtime.quantize(model_name, combo.backend, combo.precision, combo.device, list(combo.options),
                                  progress=progress)
        took = time.perf_counter() - started
        rows.append({"backend": combo.backend, "precision": combo.precision, "device": combo.device,
                     "options": list(combo.options), "label": combo.label,
                     "quantize_s": round(took, 2) if took > 2 else None,  # as bench: None = it was cached
                     "artifact_mb": round(cache.folder_size(folder) / 1e6, 1)})
    versions = {c.backend: registry().get(c.backend).info.runtime_versions for c in combos}
    return {"aipc_version": aipc.__version__, "model": model_name, "machine": bench.machine(), "versions": versions,
            "settings": {"accuracy_only": True}, "results": rows}


def variant_key(row: dict) -> tuple:
    return row["backend"], row["precision"], row["device"], tuple(row["options"])


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
    parser.add_argument("--answer-tokens", type=int, default=48, help="greedy answer length for accuracy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--reuse-accuracy", type=Path, metavar="SWEEP_JSON",
                        help="take the accuracy of variants this earlier sweep measured with the same model, "
                        "backend, precision, runtime versions and CPU (greedy answers do not change); speed is measured anew")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="quantize (or take from the cache) and measure accuracy, artifact size and quantize time; no speed")
    args = parser.parse_args()
    os.environ["AIPC_NUM_THREADS"] = str(args.threads)
    combos, notes = bench.combinations((args.backend,), (args.precision,), args.device, tuple(args.variant or [""]))
    for note in notes:
        print(note)

    def progress(message: str, fraction: float | None = None) -> None:
        print(message, flush=True)

    if args.accuracy_only:
        report = artifacts_report(args.model, combos, progress)
    else:
        report = bench.run(args.model, combos, args.prompt_tokens, args.new_tokens, args.runs, 1, None, False, progress)
    report["answer_tokens"] = args.answer_tokens
    report["question_sets"] = SETS_DIGEST
    reference = reference_answers(args.model, args.answer_tokens)
    report["reference"] = reference_summary(reference)
    earlier = reusable_accuracy(args.reuse_accuracy, report, args.answer_tokens) if args.reuse_accuracy else {}
    for combo, row in zip(combos, report["results"]):
        if variant_key(row) in earlier:
            row.update(earlier[variant_key(row)], accuracy_from=args.reuse_accuracy.name)
            continue
        model = aipc.load(args.model, backend=combo.backend, precision=combo.precision, device=combo.device,
                          options=list(combo.options))
        row.update(accuracy(model, reference, args.answer_tokens))
        model.close()
    width = max(len(",".join(row["options"]) or "(default)") for row in report["results"]) + 2
    print(f"\n{'variant':<{width}}{'decode tok/s':>13}{'MB':>7}{'quantize s':>11}{'tuning kept':>13}{'eval kept':>11}"
          f"{'eval 1st tok':>13}{'suite':>7}{'Paris':>7}")
    for row in report["results"]:
        name = ",".join(row["options"]) or "(default)"
        tune, held = row["tuning"], row["eval"]
        print(f"{name:<{width}}{row.get('decode_tps', '-'):>13}{row['artifact_mb']:>7}{row.get('quantize_s') or '-':>11}"
              f"{tune['kept']:>6}/{tune['reference_right']:<3} {tune['kept_share'] or 0:4.0%}"
              f"{held['kept']:>4}/{held['reference_right']:<3}{held['kept_share'] or 0:4.0%}"
              f"{held['first_token_agreement']:>13}{row['suite_first_token']:>7}{'yes' if row['suite_paris'] else 'no':>7}")
    print(f"{args.threads} thread(s); kept = questions the reference (transformers fp32) answers right that the variant "
          f"still answers right; greedy, {args.answer_tokens} answer tokens; quantize s blank = artifact was cached")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
