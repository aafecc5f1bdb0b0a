"""Data-aware int4 weights with Intel's AutoRound, for the model builder to read.

Run as ``python -m aipc_directml.autoround SOURCE OUTPUT SETTINGS.json`` (a child process, like
the builder: it loads the whole PyTorch model). AutoRound tunes each Linear's rounding and
scales block by block against the source model's own outputs on calibration text (SignRound),
then writes a GPTQ-format checkpoint (``qweight`` / ``scales`` / ``qzeros``), which
onnxruntime-genai's model builder turns into ``MatMulNBits`` as it does any GPTQ checkpoint.

SETTINGS holds ``bits``, ``group_size``, ``sym``, ``iters``, ``seqlen``, ``threads`` and ``texts``
(the calibration text, already resolved by :mod:`aipc.calibration`; see :func:`pieces`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Calibration rows at most (AutoRound's nsamples; the bound of -o num_samples).
MAX_SAMPLES = 64
#: AutoRound's seed, fixed so a recipe tunes the same on the same CPU.
SEED = 42


def pieces(tokenizer, texts: list[str], seqlen: int):
    """One calibration row per text: its first ``seqlen`` tokens, so each starts as a prompt does
    (the chat template at position 0); texts shorter than that are left out, and where most are
    shorter, the rows are as long as the median text."""
    import torch

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    lengths = sorted(len(row) for row in ids)
    if not lengths or lengths[len(lengths) // 2] < 16:
        raise SystemExit(f"ValueError: the calibration text is too short ({sum(lengths)} tokens in {len(ids)} texts)")
    seqlen = min(seqlen, lengths[len(lengths) // 2])
    rows = [row[:seqlen] for row in ids if len(row) >= seqlen][:MAX_SAMPLES]
    return [torch.tensor([row]) for row in rows], seqlen


def main(argv: list[str]) -> int:
    source, output, settings_file = argv
    settings = json.loads(Path(settings_file).read_text(encoding="utf-8"))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from auto_round import AutoRound

    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    tokenizer = AutoTokenizer.from_pretrained(source)
    dataset, seqlen = pieces(tokenizer, settings["texts"], settings["seqlen"])
    model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    print(f"AutoRound: {len(dataset)} calibration pieces of {seqlen} tokens, {settings['iters']} steps per block",
          flush=True)
    quantizer = AutoRound(model, tokenizer=tokenizer, dataset=dataset, bits=settings["bits"],
                          group_size=settings["group_size"], sym=settings["sym"], iters=settings["iters"],
                          nsamples=len(dataset), seqlen=seqlen, device_map="cpu", seed=SEED)
    quantizer.quantize_and_save(output, format="auto_gptq")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
