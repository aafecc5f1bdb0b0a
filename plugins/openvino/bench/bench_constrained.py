"""Measure constrained output on the openvino backend (OpenVINO GenAI's StructuredOutputConfig,
XGrammar): decode speed under a 10-field JSON schema next to unconstrained decode, and what
compiling a schema costs.

    python plugins/openvino/bench/bench_constrained.py [--threads 1] [--runs 7]

SmolLM2-135M-Instruct int4 on the CPU, one process, prefix reuse off (``cache_slots=0``: every
run prefills its whole prompt). Decode: the constrained answer's length N is taken from a first
run; then ``--runs`` pairs alternate a constrained run and an unconstrained run of exactly N
tokens (ignore_eos) on the same prompt; medians of aipc.Usage's decode tokens/s (inter-token
time after the first token) and of the process CPU time per token. Compile cost: XGrammar
compiles when ``generate`` starts, so it shows in the time to the first token (TTFT): for the
first constraint on a freshly loaded model (XGrammar's tokenizer info is built then), for schemas
it has never seen (field names varied), for the same schema again, and unconstrained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def schema(tag: str = "") -> dict:
    """A 10-field record: strings (bounded), integers (bounded), a boolean, an enum, an array and
    a pattern (the directml bench's schema with its bounded number made an integer: XGrammar does
    not enforce a number's bounds, and the backend refuses them)."""
    text = lambda n: {"type": "string", "maxLength": n}  # noqa: E731
    properties = {
        "name": text(24), "age": {"type": "integer", "minimum": 0, "maximum": 120}, "city": text(24),
        "country": text(24), "job": text(24), "employed": {"type": "boolean"},
        "height_cm": {"type": "integer", "minimum": 50, "maximum": 250},
        "eyes": {"enum": ["blue", "green", "brown", "grey"]},
        "languages": {"type": "array", "items": text(12), "minItems": 1, "maxItems": 3},
        "id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
    }
    properties = {f"{k}{tag}": v for k, v in properties.items()}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


PROMPT = "Invent a person and describe them as a JSON record."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--backend", default="openvino")
    args = parser.parse_args()

    import jsonschema

    import aipc
    from aipc.constraints import Constraint
    from aipc.sources import DEFAULT_MODEL, resolve

    source = str(resolve(DEFAULT_MODEL).hf_dir)

    def load():
        return aipc.load(source, backend=args.backend, precision="int4", device=args.device, cache_slots=0,
                         options={"threads": args.threads})

    model = load()

    def ttft(constraint, m=None):
        m = m or model
        m.complete(PROMPT, max_new_tokens=2, constraint=constraint)
        return 1000 * m.usage.time_to_first_token_s

    rows = {}
    rows["first constraint on a new model (+ XGrammar's tokenizer info)"] = ttft(Constraint.json_schema(schema("_first")))
    second = load()
    rows["first constraint on a second load of the model"] = ttft(Constraint.json_schema(schema("_second")), second)
    del second
    rows["new 10-field schema (median)"] = statistics.median(
        ttft(Constraint.json_schema(schema(f"_{i}"))) for i in range(args.runs))
    rows["same schema again (median)"] = statistics.median(
        ttft(Constraint.json_schema(schema("_0"))) for _ in range(args.runs))
    rows["unconstrained (median)"] = statistics.median(ttft(None) for _ in range(args.runs))

    constraint = Constraint.json_schema(schema())
    text = model.complete(PROMPT, max_new_tokens=400, constraint=constraint)
    jsonschema.validate(json.loads(text), schema())
    tokens = model.usage.generated_tokens
    guided_tps, free_tps, guided_cpu, free_cpu = [], [], [], []
    for _ in range(args.runs):
        cpu = time.process_time()
        model.complete(PROMPT, max_new_tokens=400, constraint=constraint)
        guided_cpu.append(1000 * (time.process_time() - cpu) / model.usage.generated_tokens)
        guided_tps.append(model.usage.decode_tokens_per_s)
        cpu = time.process_time()
        model.complete(PROMPT, max_new_tokens=tokens, ignore_eos=True)
        free_cpu.append(1000 * (time.process_time() - cpu) / model.usage.generated_tokens)
        free_tps.append(model.usage.decode_tokens_per_s)

    print(f"SmolLM2-135M int4 {args.backend}/{args.device}, {args.threads} thread(s), StructuredOutputConfig (XGrammar)\n")
    print("| case | time to first token |\n|---|---|")
    for name, first in rows.items():
        print(f"| {name} | {first:.1f} ms |")
    g, f = statistics.median(guided_tps), statistics.median(free_tps)
    print(f"\ndecode, {tokens} tokens, medians of {args.runs}: 10-field schema {g:.1f} tok/s, "
          f"unconstrained {f:.1f} tok/s, ratio {g / f:.2f}")
    print(f"runs: schema {[round(x, 1) for x in guided_tps]}, free {[round(x, 1) for x in free_tps]}")
    gc, fc = statistics.median(guided_cpu), statistics.median(free_cpu)
    print(f"process CPU time per token (prefill included): schema {gc:.2f} ms, unconstrained {fc:.2f} ms, "
          f"ratio {fc / gc:.2f}")
    print(f"prompt tokens: {model.usage.prompt_tokens}; answer: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
