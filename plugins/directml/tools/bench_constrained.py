"""Measure constrained output on the directml backend: decode speed under a 10-field JSON schema
next to unconstrained decode, and what compiling a schema costs.

    python plugins/directml/tools/bench_constrained.py [--threads 1] [--runs 5]

SmolLM2-135M-Instruct, int4 CPU build, one process. Decode: the constrained answer's length N
is taken from a first run; then ``--runs`` pairs alternate a constrained run and an unconstrained
run of exactly N tokens (ignore_eos) on the same prompt; medians of aipc.Usage's decode tokens/s
(inter-token time after the first token) and of the process CPU time per token (which counts the
runtime's mask thread, and is steadier than wall time on a busy machine). Compile cost: making the og.Generator (where the
runtime compiles the grammar) and the time to the first token, for the first constraint on a
freshly loaded model (the runtime then also builds its llguidance tokenizer), for schemas it has
never seen (field names varied), for the same schema again, and unconstrained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def schema(tag: str = "") -> dict:
    """A 10-field record: strings (bounded), integers (bounded), a number, a boolean, an enum, an
    array and a pattern."""
    text = lambda n: {"type": "string", "maxLength": n}  # noqa: E731
    properties = {
        "name": text(24), "age": {"type": "integer", "minimum": 0, "maximum": 120}, "city": text(24),
        "country": text(24), "job": text(24), "employed": {"type": "boolean"},
        "height_m": {"type": "number", "minimum": 0.5, "maximum": 2.5},
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
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import jsonschema

    import aipc
    from aipc.constraints import Constraint
    from aipc.sources import DEFAULT_MODEL, resolve
    from aipc.types import GenerationConfig
    from aipc_directml import engine

    source = str(resolve(DEFAULT_MODEL).hf_dir)
    folder = aipc.quantize(source, backend="directml", precision="int4", device="CPU")

    def load():
        return aipc.load(str(folder), backend="directml", device="CPU", options={"threads": args.threads})

    model = load()
    runtime = model.loaded.runtime
    ids = model.tokenize(model.format_prompt(PROMPT))

    def setup(constraint, runtime=runtime):
        """(ms to make the generator, ms to the first token) under ``constraint`` (None: free)."""
        options = engine.search_options(GenerationConfig(max_new_tokens=8), len(ids), runtime.context_length)
        started = time.perf_counter()
        guide = engine.guidance(runtime, constraint) if constraint else None
        generator = engine._generator(runtime, options, guide)
        made = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        del generator
        return 1000 * (made - started), 1000 * (first - started)

    rows = {}
    first = Constraint.json_schema(schema("_first"))
    rows["first constraint on a new model (+ runtime's llguidance tokenizer)"] = setup(first)
    second = load()
    rows["first constraint on a second load of the model"] = setup(Constraint.json_schema(schema("_second")),
                                                                   second.loaded.runtime)
    fresh = [setup(Constraint.json_schema(schema(f"_{i}"))) for i in range(args.runs)]
    rows["new 10-field schema (median)"] = tuple(statistics.median(x[k] for x in fresh) for k in (0, 1))
    again = [setup(Constraint.json_schema(schema("_0"))) for _ in range(args.runs)]
    rows["same schema again (median)"] = tuple(statistics.median(x[k] for x in again) for k in (0, 1))
    free = [setup(None) for _ in range(args.runs)]
    rows["unconstrained (median)"] = tuple(statistics.median(x[k] for x in free) for k in (0, 1))

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

    print(f"SmolLM2-135M int4 CPU, {args.threads} thread(s), onnxruntime-genai guidance\n")
    print("| case | make og.Generator | to first token |\n|---|---|---|")
    for name, (made, first) in rows.items():
        print(f"| {name} | {made:.1f} ms | {first:.1f} ms |")
    g, f = statistics.median(guided_tps), statistics.median(free_tps)
    print(f"\ndecode, {tokens} tokens, medians of {args.runs}: 10-field schema {g:.1f} tok/s, "
          f"unconstrained {f:.1f} tok/s, ratio {g / f:.2f}")
    print(f"runs: schema {[round(x, 1) for x in guided_tps]}, free {[round(x, 1) for x in free_tps]}")
    gc, fc = statistics.median(guided_cpu), statistics.median(free_cpu)
    print(f"process CPU time per token (prefill included; the runtime's mask thread counts too): "
          f"schema {gc:.2f} ms, unconstrained {fc:.2f} ms, ratio {fc / gc:.2f}")
    print(f"answer: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
