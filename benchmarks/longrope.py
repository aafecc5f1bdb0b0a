"""LongRoPE and Phi-4-mini-style agreement: each backend's greedy tokens against the model's own intent.

For the tiny LongRoPE models (aipc.testing: original context 64, max 1024) and three prompt kinds
— short (well under 64 tokens), long (over 200), crossing (a prompt under 64 whose 16 new tokens
cross position 64) — the ground truth is transformers at fp32 recomputing the whole sequence at
every step (no cache: positions past the original context use the long factors for every token,
which is what the model's implementation intends when it drops its cache at the crossing). Each
backend's 16 greedy tokens are compared with it: how many leading tokens agree.

    python benchmarks/longrope.py -b transformers -b openvino -p fp32 [--json out.json]

Run it in an environment that has the backends installed (e.g. .tox/openvino/bin/python).
"""

from __future__ import annotations

import argparse
import json
import sys

NEW = 16
KINDS = {"short": 13, "long": 215, "crossing": 59}


def main() -> int:
    import aipc
    from aipc.conformance.support import run_raw
    from aipc.testing import prompt_of_length, recomputed_greedy, tiny_phi3_cached

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--backend", action="append", required=True)
    parser.add_argument("-p", "--precision", action="append", default=None)
    parser.add_argument("--variant", action="append", default=None, help="phi3-128k, phi4-mini (default: both)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    rows = []
    for variant in args.variant or ["phi3-128k", "phi4-mini"]:
        folder = tiny_phi3_cached(0, variant)
        reference = aipc.load(str(folder), backend="transformers", precision="fp32")
        prompts = {kind: prompt_of_length(reference, n) for kind, n in KINDS.items()}
        want = {kind: recomputed_greedy(folder, reference.tokenize(reference.format_prompt(p)), NEW)
                for kind, p in prompts.items()}
        reference.close()
        for backend in args.backend:
            for precision in args.precision or ["fp32"]:
                try:
                    model = aipc.load(str(folder), backend=backend, precision=precision)
                except Exception as error:  # noqa: BLE001 (a row says why)
                    rows.append({"variant": variant, "backend": backend, "precision": precision, "error": str(error)})
                    continue
                for kind, prompt in prompts.items():
                    row = {"variant": variant, "backend": backend, "precision": precision, "kind": kind,
                           "prompt_tokens": len(model.tokenize(model.format_prompt(prompt)))}
                    try:
                        _, got, _ = run_raw(model, prompt, max_new_tokens=NEW, ignore_eos=True)
                        row["agree"] = next((i for i, (a, b) in enumerate(zip(got, want[kind])) if a != b),
                                            min(len(got), NEW))
                    except Exception as error:  # noqa: BLE001
                        row["error"] = str(error).splitlines()[0][:200]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                model.close()
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
