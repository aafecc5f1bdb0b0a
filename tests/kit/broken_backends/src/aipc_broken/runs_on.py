"""Generates in a background thread and, when the stream is closed, just stops reading: the
runtime goes on computing every remaining token."""

import atexit
import queue
import threading

from aipc import hookimpl
from aipc.backends import reference
from aipc.backends.reference import aipc_load, aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)
from aipc.types import Chunk

from . import check_prompt, info


@hookimpl
def aipc_backend_info():
    return info("broken-cancel")


_exiting = threading.Event()
_threads: list[threading.Thread] = []


@atexit.register
def _stop_at_exit() -> None:  # not the defect: only so that the interpreter can exit cleanly
    _exiting.set()
    for thread in _threads:
        thread.join(timeout=60)


class _Streamer:
    def __init__(self) -> None:
        self.tokens: queue.SimpleQueue = queue.SimpleQueue()
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.tokens.put(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self) -> None:
        self.tokens.put(None)


@hookimpl
def aipc_generate(model, prompt, config):
    import torch

    check_prompt(model, prompt)
    hf_model, tokenizer = model.runtime
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    streamer = _Streamer()

    def work():
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Exiting(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), _exiting.is_set(), dtype=torch.bool)

        with torch.inference_mode():
            hf_model.generate(**inputs, streamer=streamer, stopping_criteria=StoppingCriteriaList([Exiting()]),
                              **reference.generation_kwargs(config, tokenizer))

    _threads.append(threading.Thread(target=work, daemon=True))
    _threads[-1].start()
    while (ids := streamer.tokens.get()) is not None:
        yield Chunk(tokenizer.decode(ids, skip_special_tokens=True), tokens=len(ids), ids=tuple(ids))
