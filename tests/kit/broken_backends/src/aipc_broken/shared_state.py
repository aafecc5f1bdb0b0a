"""Claims two generations at once (max_batch_size 2) but keeps one decoding state per model: a
second generation replaces the state of the first. (Greedy only: the suite runs only its batch
test against it.) Each token takes at least 50 ms, as on a slower runtime, so the suite's two
generations overlap however busy the machine is (a tiny model's 24 tokens could otherwise finish
before the second thread starts); one forward pass runs at a time (a lock), so the two only spoil
each other's state, never crash the process."""

import threading
import time

from aipc import hookimpl
from aipc.backends.reference import aipc_load, aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)
from aipc.types import Chunk

from . import check_prompt, info


@hookimpl
def aipc_backend_info():
    return info("broken-batch", max_batch_size=2)


_FORWARD = threading.Lock()


@hookimpl
def aipc_generate(model, prompt, config):
    import torch
    from transformers import DynamicCache

    check_prompt(model, prompt)
    hf_model, tokenizer = model.runtime
    model.extra["past"] = DynamicCache()  # the defect: one state per model, not per generation
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    for _ in range(config.max_new_tokens):
        with _FORWARD, torch.inference_mode():
            out = hf_model(input_ids=torch.tensor([ids]), past_key_values=model.extra["past"], use_cache=True)
        ids = [int(out.logits[0, -1].argmax())]
        time.sleep(0.05)
        yield Chunk(tokenizer.decode(ids, skip_special_tokens=True), tokens=1, ids=tuple(ids))
