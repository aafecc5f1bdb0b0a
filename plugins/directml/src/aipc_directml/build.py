"""Run onnxruntime-genai's model builder, with one fix, as ``python -m aipc_directml.build ARGS``.

The arguments are exactly those of ``python -m onnxruntime_genai.models.builder`` (see
``get_args()`` in its ``builder.py``; its ``-h`` crashes in 0.18.0). The plugin runs this in a
subprocess: the builder loads the whole PyTorch model, prints freely, puts its own folder on
``sys.path`` and keeps memory; a child process confines all of that and can be stopped.

The fix: the builder takes *any* ``torch.nn.Linear`` whose ``out_features`` equals the vocabulary
size for the LM head (``Model.has_lm_head``). A model where another projection has that width
(e.g. a fused ``gate_up_proj`` of 2 * intermediate_size == vocab_size) gets its logits wired to
the wrong layer and silently produces garbage. Here the LM head is the model's own output
embedding (``get_output_embeddings()``), which is what the builder means.
"""

from __future__ import annotations

import sys


def _patch_lm_head() -> None:
    try:
        import torch
        from builders.base import Model  # importable once onnxruntime_genai.models is imported
    except ImportError:  # a builder layout we do not know: run it unpatched
        return
    original = getattr(Model, "has_lm_head", None)
    if original is None:
        return

    def has_lm_head(self, module):  # noqa: ANN001 - the builder's own signature
        weights = getattr(self, "weights", None)
        output_embeddings = getattr(weights, "get_output_embeddings", None)
        if isinstance(weights, torch.nn.Module) and callable(output_embeddings):
            head = output_embeddings()
            if isinstance(head, torch.nn.Module):
                return module is head
        return original(self, module)

    Model.has_lm_head = has_lm_head


def main(argv: list[str]) -> int:
    import runpy

    import onnxruntime_genai.models  # noqa: F401 - puts the builder's own folder on sys.path

    _patch_lm_head()
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    # Run the builder's own command line, whatever its version's internals look like.
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
