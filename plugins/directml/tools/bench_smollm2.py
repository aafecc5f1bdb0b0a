"""Measure SmolLM2-135M-Instruct on the directml backend next to the reference backend.

    python plugins/directml/tools/bench_smollm2.py [--threads 1] [--tokens 64] [--runs 3]

Each configuration runs in its own child process (so peak memory is its own): a fresh build
into a temporary folder (build time; the builder's peak memory), then load, one warm-up and
``--runs`` generations of ``--tokens`` tokens (ignore_eos) at greedy: median time to first
token and decode tokens/s as aipc.Usage measures them, the answer to the capital question,
the artifact size and the peak resident memory of the run. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CONFIGS = (("transformers", "fp32", "CPU"), ("directml", "fp32", "CPU"), ("directml", "int8", "CPU"),
           ("directml", "int4", "CPU"), ("directml", "fp16", "AUTO"), ("directml", "int4", "AUTO"))

CHILD = r"""
import json, resource, statistics, sys, tempfile, time
from pathlib import Path
import aipc
from aipc.cache import folder_size
from aipc.sources import DEFAULT_MODEL, resolve
backend, precision, device, threads, tokens, runs = sys.argv[1:7]
source = resolve(DEFAULT_MODEL).hf_dir
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "artifact"
    started = time.perf_counter()
    aipc.quantize(str(source), backend=backend, precision=precision, device=device, output=out,
                  options={"threads": threads})
    build_s = time.perf_counter() - started
    size = folder_size(out)
    build_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    model = aipc.load(str(out), device=device, options={"threads": threads})
    answer = model.complete("What is the capital of France?", system="You are a helpful AI assistant.", max_new_tokens=24)
    ttft, decode = [], []
    for _ in range(int(runs)):
        model.complete("Can you introduce yourself?", system="You are a helpful AI assistant.",
                       max_new_tokens=int(tokens), ignore_eos=True)
        ttft.append(model.usage.time_to_first_token_s)
        decode.append(model.usage.decode_tokens_per_s)
    print(json.dumps({"backend": backend, "precision": precision, "device": device, "build_s": round(build_s, 1),
                      "size_mb": round(size / 1e6, 1), "ttft_ms": round(1000 * statistics.median(ttft), 1),
                      "decode_tps": round(statistics.median(decode), 1), "prompt_tokens": model.usage.prompt_tokens,
                      "run_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "build_peak_mb": round(build_rss), "answer": answer}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1")
    parser.add_argument("--tokens", default="64")
    parser.add_argument("--runs", default="3")
    args = parser.parse_args()
    rows = []
    for backend, precision, device in CONFIGS:
        done = subprocess.run([sys.executable, "-c", CHILD, backend, precision, device, args.threads, args.tokens,
                               args.runs], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{backend} {precision} {device} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\nSmolLM2-135M-Instruct, {args.threads} thread(s), {args.tokens} new tokens, median of {args.runs}\n")
    print("| backend | precision | device | build s | artifact MB | TTFT ms | decode tok/s | run peak MB | builder peak MB | answer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['precision']} | {r['device']} | {r['build_s']} | {r['size_mb']} | {r['ttft_ms']} "
              f"| {r['decode_tps']} | {r['run_peak_mb']} | {r['build_peak_mb']} | {r['answer'][:40]!r} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
