"""The library engine's worker process: one loaded model per process.

Run as ``python -m aipc_npu.library_worker`` by :mod:`aipc_npu.library_engine`, in a working
directory inside aipc's cache (the library writes ``./cache`` and ``./nc_workspace`` into the
current directory). One process per model because loading several quantized models in one
process aborts inside the library.

Protocol: JSON lines. Commands on stdin (``load``, ``generate``, ``cancel``, ``quit``); answers
on the original stdout, which is moved to a private descriptor at start so that whatever the
library prints lands on stderr (the engine keeps it in a log file). Closing stdin ends the
process, so it never outlives its parent. A ``generate`` is answered by ``{"cached": n}`` (prompt
tokens reused), then ``{"ids": [...]}`` per token, then ``{"done": true, ...}`` or an error.

Prefix reuse: the worker keeps ``cache_slots`` transformers ``DynamicCache`` objects (the KV
state ``generate`` builds and updates in place), chosen by :class:`aipc.prefix.PrefixCache`. A
prompt continuing a kept conversation gets that cache cropped to the common prefix
(``DynamicCache.crop``); transformers 4.47's ``generate`` starts ``cache_position`` at the cache's
length (``_get_initial_cache_position``) and feeds only ``input_ids[:, cache_position]``
(``prepare_inputs_for_generation``), so only the new tokens are prefilled. The library's own
``LlamaAttention`` updates the same cache object.

Load follows the walkthrough's ``NPUModelForCausalLM.from_pretrained(id, use_cache=True,
config=CompilerConfig(dtype=...), attn_implementation="sdpa")``, which is
``AutoModelForCausalLM.from_pretrained(...)`` then ``intel_npu_acceleration_library.compile(model,
config)`` when ``export=False`` (its ``export=True`` pickles the compiled model into ./cache and
the second load fails on torch >= 2.6). The two steps are taken here one by one so that tied
input/output embeddings can be untied in between: int8/int4 compression otherwise rewrites the
shared tensor and destroys the embeddings (SmolLM2 has them tied).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback


def _send(channel, **message) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__)[:300]


class Worker:
    def __init__(self, channel) -> None:
        self.channel = channel
        self.model = None
        self.tokenizer = None
        self.prefix = None  # aipc.prefix.PrefixCache, made at load
        self.cancel = threading.Event()
        self.commands: queue.Queue = queue.Queue()
        self.info: dict = {}

    def send(self, **message) -> None:
        _send(self.channel, **message)

    # ------------------------------------------------------------------ commands

    def read_commands(self) -> None:
        for line in sys.stdin:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("op") == "cancel":
                self.cancel.set()
            else:
                self.commands.put(message)
        self.cancel.set()
        self.commands.put(None)  # parent gone

    def run(self) -> None:
        threading.Thread(target=self.read_commands, name="aipc-npu-worker-stdin", daemon=True).start()
        while (message := self.commands.get()) is not None:
            op = message.get("op")
            try:
                if op == "load":
                    self.load(message)
                elif op == "generate":
                    self.generate(message)
                elif op == "quit":
                    break
                else:
                    self.send(error=f"unknown command {op!r}", kind="BackendError")
            except Exception as error:  # reported to the parent, which raises the aipc error
                from aipc.errors import AipcError

                if isinstance(error, AipcError):  # already a one-line message for the user
                    self.send(error=str(error), kind=type(error).__name__)
                    continue
                traceback.print_exc()
                self.send(error=_first_line(error), kind=getattr(error, "aipc_kind", "BackendError"))

    # ------------------------------------------------------------------ load

    def load(self, message: dict) -> None:
        started = time.perf_counter()
        import torch

        threads = message.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        import intel_npu_acceleration_library as npu_lib
        from intel_npu_acceleration_library.backend import npu_available
        from intel_npu_acceleration_library.compiler import CompilerConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer

        has_npu = bool(npu_available())
        device = message["device"]
        if device == "NPU" and not has_npu:
            error = RuntimeError("no NPU on this machine: the library's OpenVINO 2024.4 finds no NPU "
                                 "(it would fall back to CPU; use --device NPU-EMU with AIPC_NPU_EMULATE=1, or AUTO)")
            error.aipc_kind = "BackendUnavailableError"
            raise error
        dtype = {"fp16": torch.float16, "int8": npu_lib.int8, "int4": npu_lib.int4}[message["precision"]]
        folder = message["folder"]
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, use_cache=True, attn_implementation="sdpa",
                                                         torch_dtype=torch.float32)
        except Exception as error:  # OSError, ValueError, safetensors errors: a broken folder
            error.aipc_kind = "InvalidModelError"
            raise
        untied = False
        output = model.get_output_embeddings()
        if message["precision"] in ("int8", "int4") and output is not None and \
                output.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
            output.weight = torch.nn.Parameter(output.weight.detach().clone())
            model.config.tie_word_embeddings = False
            untied = True
        model.eval()
        model = npu_lib.compile(model, CompilerConfig(dtype=dtype))
        from aipc.artifacts import longrope_original
        from aipc.prefix import PrefixCache

        self.model, self.tokenizer = model, tokenizer
        self.prefix = PrefixCache(int(message.get("cache_slots", 1)), longrope_original(folder))
        self.info = {"npu_available": has_npu, "untied_embeddings": untied, "load_s": round(time.perf_counter() - started, 2),
                     "library": getattr(npu_lib, "__version__", "?"), "torch": torch.__version__}
        self.send(ok=True, info=self.info)

    # ------------------------------------------------------------------ generate

    def generate(self, message: dict) -> None:
        import torch
        from transformers import DynamicCache, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        from aipc.backends.reference import generation_kwargs
        from aipc.constraints import Constraint
        from aipc.guidance import Guide
        from aipc.types import GenerationConfig

        self.cancel.clear()
        if self.model is None:
            raise RuntimeError("no model loaded")
        # stop strings are the core's (capabilities.native_stop_strings False): not passed on
        settings = {k: v for k, v in message["config"].items() if k not in ("stop", "constraint")}
        constraint = message["config"].get("constraint")
        config = GenerationConfig(**settings, constraint=Constraint(**constraint) if constraint else None)
        processors = LogitsProcessorList()
        if config.constraint is not None:  # llguidance masks each step's logits, as in the reference backend
            self.guide = getattr(self, "guide", None) or Guide(self.tokenizer)
            processors.append(self.guide.logits_processor(config.constraint))
        prompt_ids = [int(i) for i in message["ids"]]
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        # continue the kept state of the conversation this prompt extends, cut back to the common
        # prefix; the slot is empty until this generation says what the cache holds
        slot, reuse = self.prefix.take(prompt_ids)
        cache = slot.state if reuse else DynamicCache()
        cache.crop(reuse)
        reuse = cache.get_seq_length()  # what the cache really holds, whatever the slot's record says
        slot.clear()
        self.send(cached=reuse)
        cancel, send = self.cancel, self.send

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        class Streamer:
            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate() first puts the prompt
                    self.prompt_seen = True
                    return
                send(ids=[int(i) for i in value.reshape(-1).tolist()])

            def end(self):
                pass

        started = time.perf_counter()
        if config.seed is not None:
            torch.manual_seed(config.seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                                      streamer=Streamer(), stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                      logits_processor=processors,
                                      **generation_kwargs(config, self.tokenizer))
        # the cache holds the prompt and every generated token but the last (never fed back), also
        # when a cancel stopped generate() early
        slot.hold(cache, out[0, : cache.get_seq_length()].tolist())
        generated = int(out.shape[-1] - ids.shape[-1])
        self.send(done=True, perf={"generated_tokens": generated, "cached_tokens": reuse,
                                   "total_s": round(time.perf_counter() - started, 3)})


def main() -> int:
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the library's prints go to stderr, never into the protocol
    sys.stdout = sys.stderr
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    Worker(channel).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
