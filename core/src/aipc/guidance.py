"""Constrained decoding for backends that compute logits in PyTorch (the reference backend, the
example backend, the NPU library engine): llguidance, the library onnxruntime-genai's own
guidance uses, masks the logits of each step to the tokens the constraint allows.

    guide = Guide(hf_tokenizer)                    # once per loaded model
    matcher = guide.matcher(config.constraint)     # per generation (compiled once per constraint)
    guide.mask_(matcher, logits)                   # each step, before choosing a token
    matcher.consume_token(token)

or ``guide.logits_processor(constraint)`` for transformers' ``generate``. Imports llguidance and
torch lazily: importing this module is cheap.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from .constraints import Constraint
from .errors import InvalidConfigError

KINDS = ("json_schema", "regex", "grammar")
_FORMATS = {"json_schema": "json_schema", "regex": "regex", "grammar": "gbnf"}
#: How JSON under a schema is laid out: on one line, ", " between items and ": " after keys (as
#: Python's json.dumps). llguidance's default (any run of whitespace between tokens) lets a weak
#: model fill its answer with blank lines until max_tokens (SmolLM2 int4, measured on directml:
#: schema 5 of the suite ran 60 tokens of newlines); a bounded whitespace_pattern is not honoured
#: by the llguidance inside onnxruntime-genai 0.18, these options are.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def llguidance_schema(constraint: Constraint) -> str:
    """The JSON schema text for llguidance (here, or inside onnxruntime-genai) with aipc's
    layout, unless the schema sets its own ``x-guidance`` options."""
    schema = constraint.schema
    if isinstance(schema, dict) and "x-guidance" not in schema:
        schema = {**schema, "x-guidance": JSON_LAYOUT}
    return json.dumps(schema)


class Guide:
    """llguidance over one model's Hugging Face (fast) tokenizer; compiled constraints are kept
    (16, least recently used dropped) so a repeated schema costs a copy, not a compile."""

    def __init__(self, hf_tokenizer, vocab_size: int | None = None) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.vocab_size = vocab_size
        self._tokenizer = None
        self._compiled: OrderedDict[Constraint, Any] = OrderedDict()

    def matcher(self, constraint: Constraint):
        """A fresh matcher for ``constraint``; InvalidConfigError if llguidance refuses it."""
        import llguidance

        if self._tokenizer is None:
            import llguidance.hf

            self._tokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer)
        compiled = self._compiled.get(constraint)
        if compiled is None:
            try:
                text = llguidance_schema(constraint) if constraint.kind == "json_schema" else constraint.value
                grammar = llguidance.grammar_from(_FORMATS[constraint.kind], text)
            except (ValueError, TypeError) as error:
                raise InvalidConfigError(f"the {constraint.kind} constraint is not usable: {error}") from None
            compiled = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
            if compiled.is_error():
                raise InvalidConfigError(f"the {constraint.kind} constraint is not usable: {compiled.get_error()}")
            self._compiled[constraint] = compiled
            if len(self._compiled) > 16:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(constraint)
        return compiled.deep_copy()

    def mask_(self, matcher, logits) -> None:
        """Set the logits (1-D or [1, vocab] torch tensor) of every token the matcher does not
        allow now to -inf; tokens past the tokenizer's vocabulary (padding) are never allowed."""
        import numpy as np
        import torch

        allowed = torch.from_numpy(np.frombuffer(matcher.compute_logit_bias(), dtype=np.uint8) != 0)
        row = logits.view(-1)
        n = min(allowed.numel(), row.numel())
        row[:n].masked_fill_(~allowed[:n], float("-inf"))
        row[n:] = float("-inf")

    def logits_processor(self, constraint: Constraint):
        """A transformers ``LogitsProcessor`` (batch 1) enforcing ``constraint``."""
        from transformers import LogitsProcessor

        guide, matcher = self, self.matcher(constraint)

        class Guided(LogitsProcessor):
            def __init__(self) -> None:
                self.started = False

            def __call__(self, input_ids, scores):
                if self.started:  # the token chosen at the previous step
                    matcher.consume_token(int(input_ids[0, -1]))
                self.started = True
                guide.mask_(matcher, scores)
                return scores

        return Guided()
