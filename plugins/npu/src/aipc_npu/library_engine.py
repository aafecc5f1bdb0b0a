"""The ``library`` engine: the Intel NPU Acceleration Library (the walkthrough's own path).

The library reached end of life (repository archived April 2025; Intel recommends OpenVINO
GenAI for the NPU). It is kept as an optional engine because the walkthrough uses it.

- Artifact (``aipc_quantize``): the Hugging Face folder itself (hard links), with the two small
  files that the library's pinned transformers (4.47) cannot read rewritten: a
  ``tokenizer_config.json`` naming ``TokenizersBackend`` (transformers 5) names
  ``PreTrainedTokenizerFast`` instead, and a ``config.json`` holding only ``rope_parameters``
  also gets ``rope_theta`` / ``rope_scaling``. The library compiles and quantizes when loading
  (int4 / int8 through neural-compressor, float16), so the precision is applied at load.
- Load: one worker process per model (:mod:`aipc_npu.library_worker`), because several quantized
  models in one process abort. The worker runs in ``<aipc cache>/compile/npu/library-workdir``
  (the library writes ``./cache`` and ``./nc_workspace`` into its working directory) and logs to
  ``<...>/library-logs``. Tokenizing and detokenizing happen here, in the parent.
- Prefix reuse: the worker keeps ``cache_slots`` KV caches (transformers ``DynamicCache``) and
  continues the one a prompt extends, cropped to the common prefix; it reports the tokens reused
  before the first token, and :meth:`LibraryModel.generate` sets ``LoadedModel.cached_tokens``.
- Without an NPU the library falls back to OpenVINO's CPU plugin by itself: that is the
  ``NPU-EMU`` stand-in here (0.2-0.6x plain PyTorch: a correctness path, never NPU performance).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from aipc import errors
from aipc.artifacts import first_line, read_config
from aipc.plugins import package_versions
from aipc.errors import (BackendError, BackendUnavailableError, InvalidConfigError, InvalidModelError, PromptTooLongError,
                         UnsupportedArchitectureError)
from aipc.streaming import IncrementalDecoder
from aipc.types import Chunk, GenerationConfig

from .devices import EMULATED, NPU

MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja", "*.tiktoken")
NOT_NPU_PERFORMANCE = "the library's CPU fallback (no NPU): CPU timings, not NPU performance"
RUNTIMES = ("intel-npu-acceleration-library", "torch", "transformers", "neural-compressor", "numpy")
LOAD_TIMEOUT_S = 900

_workers: "weakref.WeakSet[LibraryModel]" = weakref.WeakSet()


def runtime_versions() -> dict[str, str]:
    return package_versions(*RUNTIMES)


# ------------------------------------------------------------------ artifact


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _compat_tokenizer_config(data: dict) -> bool:
    if data.get("tokenizer_class") in ("TokenizersBackend", None) and "backend" in data:
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        return True
    return False


def _compat_config(data: dict) -> bool:
    rope = data.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" in data:
        return False
    data["rope_theta"] = rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        data.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    else:
        data.setdefault("rope_scaling", None)
    if "partial_rotary_factor" in rope:
        data.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
    return True


def check_architecture(folder: Path) -> None:
    """Refuse before any work what the library's transformers (4.47) cannot run: a Phi-3 that
    rotates part of each head (Phi-4-mini's ``partial_rotary_factor``; it came in 4.49)."""
    config = read_config(folder)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    factor = float(config.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1.0)
    if config.get("model_type") == "phi3" and factor != 1.0:
        raise UnsupportedArchitectureError(
            f"the library engine's transformers 4.47 cannot run a Phi-3 with partial_rotary_factor {factor:g} "
            "(Phi-4-mini); use the npu backend's openvino engine (-o engine=openvino)")


def write_artifact(source_dir: Path, output_dir: Path) -> dict:
    """Link the Hugging Face folder into ``output_dir``; rewrite what transformers 4.47 cannot read."""
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    if not (source_dir / "config.json").is_file():
        raise InvalidModelError(f"{source_dir} has no config.json")
    check_architecture(source_dir)
    rewritten = []
    for pattern in MODEL_FILES:
        for file in sorted(source_dir.glob(pattern)):
            target = output_dir / file.name
            if target.exists():
                continue
            fix = {"tokenizer_config.json": _compat_tokenizer_config, "config.json": _compat_config}.get(file.name)
            if fix is not None:
                try:
                    data = json.loads(file.read_text())
                except ValueError as error:
                    raise InvalidModelError(f"{file} is corrupt: {error}") from None
                if fix(data):
                    target.write_text(json.dumps(data, indent=2) + "\n")
                    rewritten.append(file.name)
                    continue
            _link(file, target)
    if not list(output_dir.glob("*.safetensors")) and not list(output_dir.glob("*.bin")):
        raise InvalidModelError(f"{source_dir} holds no weights (*.safetensors / *.bin)")
    return {"rewritten_for_transformers_4.47": rewritten}


# ------------------------------------------------------------------ worker


class LibraryModel:
    """A model loaded by the library in its own worker process."""

    def __init__(self, folder: Path, precision: str, device: str, workdir: Path, threads: int | None = None,
                 progress=lambda *a, **k: None, cache_slots: int = 1) -> None:
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.precision = precision
        self.device = device
        self.emulated = device == EMULATED
        self.perf: dict = {}
        self.busy = threading.Lock()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        except (OSError, ValueError) as error:
            raise InvalidModelError(f"cannot load the tokenizer of {self.folder}: {first_line(error)}") from None
        workdir.mkdir(parents=True, exist_ok=True)
        logs = workdir.parent / "library-logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"worker-{os.getpid()}-{time.strftime('%Y%m%d-%H%M%S')}-{id(self):x}.log"
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("PYTHONWARNINGS", "ignore")
        self._log = open(self.log_path, "w")
        progress(f"Compiling {self.folder.name} at {precision} with the Intel NPU Acceleration Library (worker process)")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aipc_npu.library_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, cwd=str(workdir), env=env, text=True, bufsize=1,
        )
        _workers.add(self)
        self._send(op="load", folder=str(self.folder), precision=precision, device=NPU if device == NPU else device,
                   threads=threads, cache_slots=cache_slots)
        reply = self._read(LOAD_TIMEOUT_S)
        if "error" in reply:
            self.close()
            raise self._error(reply)
        self.info = reply.get("info", {})

    # -------------------------------------------------------------- plumbing

    def _send(self, **message) -> None:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise BackendError(f"the library worker has exited{self._log_tail()}") from None

    def _read(self, timeout: float | None = None) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.poll()
            raise BackendError(f"the library worker died (exit code {code}){self._log_tail()}")
        return json.loads(line)

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in Path(self.log_path).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return f"; last log line: {lines[-1][:200]} (log: {self.log_path})" if lines else f" (log: {self.log_path})"

    def _error(self, reply: dict) -> errors.AipcError:
        kind = getattr(errors, reply.get("kind", "BackendError"), BackendError)
        if not (isinstance(kind, type) and issubclass(kind, errors.AipcError)):
            kind = BackendError
        return kind(f"{reply['error']}{self._log_tail() if kind is BackendError else ''}")

    def close(self) -> None:
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                process.stdin.close()  # the worker exits when its stdin closes
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # -------------------------------------------------------------- model API

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompt: str, config: GenerationConfig, context_length: int | None, loaded=None,
                 max_prompt: int | None = None) -> Iterator[Chunk]:
        """Stream the answer; ``loaded`` (the LoadedModel) gets ``cached_tokens`` before the first chunk.
        Sampling is refused: not claimed on this engine (see the plugin's backend info)."""
        if config.sampling:
            raise InvalidConfigError("the npu backend's library engine does not sample; leave temperature at 0")
        ids = self.tokenize(prompt)
        if max_prompt and len(ids) > max_prompt:
            raise PromptTooLongError(f"the prompt has {len(ids)} tokens; the npu backend takes at most {max_prompt}")
        if context_length and len(ids) >= context_length:
            raise PromptTooLongError(f"the prompt has {len(ids)} tokens; the model's context is {context_length}")
        if context_length and len(ids) + config.max_new_tokens > context_length:
            config = config.with_(max_new_tokens=context_length - len(ids))
        return self._stream(ids, config, loaded)

    def _stream(self, ids: list[int], config: GenerationConfig, loaded=None) -> Iterator[Chunk]:
        if not self.busy.acquire(blocking=False):
            raise BackendError("this model is already generating (one stream at a time)")
        finished = False
        started = time.perf_counter()
        try:
            self._send(op="generate", ids=ids, config=asdict(config))
            decoder = IncrementalDecoder(self.decode)
            while True:
                reply = self._read()
                if "cached" in reply:
                    if loaded is not None:
                        loaded.cached_tokens = int(reply["cached"])
                elif "ids" in reply:
                    yield Chunk(decoder.add(reply["ids"]), tokens=len(reply["ids"]), ids=tuple(reply["ids"]))
                elif reply.get("done"):
                    finished = True
                    rest = decoder.flush() if hasattr(decoder, "flush") else ""
                    if rest:  # text held back for an incomplete character
                        yield Chunk(rest, tokens=0, ids=())
                    self.perf = {**reply.get("perf", {}), "device": self.device,
                                 "wall_s": round(time.perf_counter() - started, 3)}
                    if self.emulated or not self.info.get("npu_available"):
                        self.perf["note"] = NOT_NPU_PERFORMANCE
                    return
                elif "error" in reply:
                    finished = True
                    raise self._error(reply)
        finally:
            if not finished and self.process.poll() is None:
                try:  # stop the worker's generate at its next token, then drain to its "done"
                    self._send(op="cancel")
                    while True:
                        reply = self._read()
                        if reply.get("done") or "error" in reply:
                            break
                except BackendError:
                    pass
            self.busy.release()


def load(folder: Path, precision: str, device: str, cache_dir: Path, threads: int | None, progress,
         cache_slots: int = 1) -> LibraryModel:
    if device not in (NPU, EMULATED, "AUTO"):
        raise BackendUnavailableError(f"the library engine has no device {device!r}")
    check_architecture(folder)
    return LibraryModel(folder, precision, device, Path(cache_dir) / "library-workdir", threads, progress, cache_slots)


@atexit.register
def _close_all() -> None:
    for model in list(_workers):
        model.close()
