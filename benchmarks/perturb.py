"""How many of the reference's right answers does rounding alone cost? The question sets' noise floor.

    python benchmarks/perturb.py --json benchmarks/results/perturb-smollm2.json \
        --variant int8 --variant int8-linear --variant noise8:0 --variant noise8:1

Each variant rewrites the fp32 source's weights in torch, saves them to a temporary folder and
answers both question sets through the transformers backend at fp32, measured as sweep.py measures
(questions the reference answers right that the variant still answers right). No runtime kernel,
activation quantization or KV cache precision is involved: what is lost is lost to the weights.

Variants, applied to every Linear layer and to the embedding and LM head (one matrix in SmolLM2):
  int8            round to nearest, int8 per output channel, asymmetric (NNCF's INT8_ASYM)
  int8-linear     the same, but the embedding and LM head stay fp32
  int8-g32        int8 asymmetric per block of 32 inputs (the directml builder's int8)
  noise8:SEED     no rounding: seeded uniform noise of the same size (within half an int8 step of each
                  channel's range); noise8:SEED:SCALE scales it (0.5 = half)

Run it where the transformers backend is installed (e.g. .tox/core/bin/python).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import aipc
from aipc import bench
from aipc.sources import DEFAULT_MODEL, resolve

from sweep import SETS_DIGEST, accuracy, reference_answers, reference_summary


def _int8(w, group: int | None = None):
    """Round to nearest, asymmetric int8 per output channel (or per ``group`` inputs)."""
    shaped = w.reshape(w.shape[0], -1, group) if group else w
    low, high = shaped.amin(-1, keepdim=True), shaped.amax(-1, keepdim=True)
    scale = ((high - low) / 255).clamp(min=1e-12)
    zero = (-low / scale).round()
    return (((shaped / scale).round() + zero).clamp(0, 255) - zero).mul(scale).reshape(w.shape)


def _noise(seed: int, size: float):
    import torch

    generator = torch.Generator().manual_seed(seed)

    def perturb(w):
        step = (w.amax(1, keepdim=True) - w.amin(1, keepdim=True)) / 255
        return w + (torch.rand(w.shape, generator=generator) - 0.5) * step * size

    return perturb


def rewrite(variant: str):
    """(what to do to each Linear weight, to the embedding or None)."""
    kind, _, rest = variant.partition(":")
    if kind == "int8":
        return _int8, _int8
    if kind == "int8-linear":
        return _int8, None
    if kind == "int8-g32":
        return (lambda w: _int8(w, 32)), (lambda w: _int8(w, 32))
    if kind == "noise8" and rest:
        seed, _, size = rest.partition(":")
        perturb = _noise(int(seed), float(size or 1))
        return perturb, perturb
    raise SystemExit(f"unknown variant {variant!r} (int8, int8-linear, int8-g32, noise8:SEED[:SCALE])")


def perturbed_copy(source: Path, variant: str, folder: Path) -> Path:
    """The source with its weights rewritten by ``variant``, saved as an fp32 Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM

    linear, embedding = rewrite(variant)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    ends = {id(model.get_input_embeddings().weight): model.get_input_embeddings().weight,
            id(model.get_output_embeddings().weight): model.get_output_embeddings().weight}  # one if tied
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) not in ends:
                module.weight.copy_(linear(module.weight))
        for weight in ends.values() if embedding else ():
            weight.copy_(embedding(weight))
    model.save_pretrained(folder)
    for side in source.iterdir():  # tokenizer and chat template
        if not (folder / side.name).exists():
            shutil.copy(side, folder / side.name)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="see above (repeatable)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for variant in args.variant:
        rewrite(variant)  # a typo fails before minutes of answers
    import torch

    os.environ["AIPC_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    source = resolve(args.model).hf_dir
    reference = reference_answers(args.model, args.answer_tokens)
    report = {"aipc_version": aipc.__version__, "model": args.model, "machine": bench.machine(),
              "versions": {"torch": torch.__version__}, "answer_tokens": args.answer_tokens,
              "question_sets": SETS_DIGEST, "reference": reference_summary(reference), "results": []}
    for variant in args.variant:
        with tempfile.TemporaryDirectory(prefix="aipc-perturb-") as scratch:
            model = aipc.load(str(perturbed_copy(source, variant, Path(scratch) / variant.replace(":", "-"))),
                              backend="transformers", precision="fp32")
            row = {"variant": variant, **accuracy(model, reference, args.answer_tokens)}
            model.close()
            shutil.rmtree(model.artifact_dir, ignore_errors=True)  # the backend's copy of the scratch folder
        report["results"].append(row)
        tune, held = row["tuning"], row["eval"]
        print(f"{variant:<16} tuning {tune['kept']}/{tune['reference_right']}  eval {held['kept']}/{held['reference_right']}"
              f"  eval first token {held['first_token_agreement']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
