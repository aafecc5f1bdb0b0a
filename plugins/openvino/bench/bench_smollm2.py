"""Measure the OpenVINO backend on SmolLM2 next to the reference backend, in one run.

    AIPC_HOME=... python plugins/openvino/bench/bench_smollm2.py [--threads 1] [--tokens 128]

Each (backend, precision) runs in its own process (clean peak memory): the first load with an
empty compile cache, then a second process loads again with that cache. Reported: quantize
time (from the artifact's manifest; quantized first if missing), artifact size, load times,
time to first token and decode tokens/s (the core's Usage, median of 3 runs, ignore_eos),
peak RSS, and whether the answer to the France question names Paris.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ONE = r"""
import json, statistics, sys, time
import aipc
backend, precision, cache, threads, tokens = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
options = {"threads": threads}
if backend == "openvino":
    options["CACHE_DIR"] = cache
extra = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
options.update(extra)
t = time.perf_counter()
model = aipc.load("smollm2-135m-instruct", backend=backend, precision=precision, device="CPU", options=options)
load_s = time.perf_counter() - t
answer = model.complete("What is the capital of France?", max_new_tokens=24)
runs = []
for _ in range(3):
    model.complete("Tell me a story.", max_new_tokens=tokens, ignore_eos=True)
    runs.append((model.usage.time_to_first_token_s, model.usage.decode_tokens_per_s, model.usage.prompt_tokens))
from aipc.cache import folder_size
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0
print(json.dumps({"load_s": model.load_s, "import_and_load_s": load_s, "ttft_ms": 1000 * statistics.median(r[0] for r in runs),
                  "decode_tok_s": statistics.median(r[1] for r in runs), "prompt_tokens": runs[0][2],
                  "paris": "Paris" in answer, "answer": answer.strip()[:60],
                  "size_mb": folder_size(model.artifact_dir) / 2**20,
                  "quantize_s": model.manifest.options.get("quantize_seconds"),
                  "peak_rss_mb": peak_mb()}))
"""


def one(backend: str, precision: str, cache: str, threads: str, tokens: int, extra: dict | None = None) -> dict:
    args = [sys.executable, "-c", ONE, backend, precision, cache, threads, str(tokens)]
    if extra:
        args.append(json.dumps(extra))
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", default="1")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requantize", action="store_true", help="quantize again (times quantize alone)")
    args = parser.parse_args()
    import aipc

    cases = [("transformers", "fp32", None), ("openvino", "fp32", None), ("openvino", "fp16", None),
             ("openvino", "fp16", {"INFERENCE_PRECISION_HINT": "bf16"}), ("openvino", "int8", None),
             ("openvino", "int4", None), ("openvino", "int4", {"ATTENTION_BACKEND": "PA"})]
    for backend, precision, _ in cases:  # quantize outside the timed processes
        started = time.perf_counter()
        aipc.quantize("smollm2-135m-instruct", backend=backend, precision=precision, device="CPU",
                      force=args.requantize and backend == "openvino" and not _)
        print(f"# {backend}/{precision} artifact ready in {time.perf_counter() - started:.1f} s", flush=True)
    header = (f"{'backend':<13}{'prec':<12}{'quant s':>8}{'size MB':>9}{'load1 s':>9}{'load2 s':>9}"
              f"{'TTFT ms':>9}{'tok/s':>7}{'peak MB':>9}  answer")
    print(header)
    for backend, precision, extra in cases:
        with tempfile.TemporaryDirectory() as cache:
            first = one(backend, precision, cache, args.threads, args.tokens, extra)
            second = one(backend, precision, cache, args.threads, args.tokens, extra) if backend == "openvino" else first
        if "error" in first or "error" in second:
            print(f"{backend:<13}{precision:<12} ERROR {first.get('error') or second.get('error')}")
            continue
        label = precision + "".join(f" {v}" for v in (extra or {}).values())
        quant = f"{first['quantize_s']:.1f}" if first.get("quantize_s") else "-"
        print(f"{backend:<13}{label:<12}{quant:>8}{first['size_mb']:>9.0f}{first['load_s']:>9.2f}{second['load_s']:>9.2f}"
              f"{second['ttft_ms']:>9.0f}{second['decode_tok_s']:>7.1f}{second['peak_rss_mb']:>9.0f}  "
              f"{'Paris' if first['paris'] else 'NO PARIS'}: {first['answer']!r}", flush=True)
    print(f"# threads={args.threads}, {args.tokens} new tokens, prompt 'Tell me a story.' (chat-templated), "
          f"median of 3; AIPC_HOME={os.environ.get('AIPC_HOME', '(default)')}")


if __name__ == "__main__":
    main()
