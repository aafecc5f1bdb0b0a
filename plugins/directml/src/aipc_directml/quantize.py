"""Building an onnxruntime-genai model from a Hugging Face folder with the model builder.

The builder runs as ``python -m aipc_directml.build`` (its own command line plus one fix, see
:mod:`aipc_directml.build`) in a child process, with its output read line by line for progress
and kept in ``build.log`` beside the model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from aipc.errors import BackendError, InvalidConfigError, InvalidModelError, UnsupportedArchitectureError
from aipc.options import thread_count

from . import __version__, artifact
from .devices import runtime_versions
from .options import autoround_settings, builder_options

LOG_NAME = "build.log"
_LAYER = re.compile(r"Reading layer (\d+)")
_BLOCK = re.compile(r"Quantizing model\.layers\.(\d+)")


def _hf_config(source_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(source_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidModelError(f"{source_dir} has no readable config.json: {error}") from None


def _failure(lines: deque[str]) -> str:
    """The builder's own last error line (its traceback's last line), for the user."""
    for line in reversed(lines):
        text = line.strip()
        if re.match(r"^[A-Za-z_.]*(Error|Exception|NotImplementedError)\b", text):
            return text[:300]
    return (lines[-1].strip() if lines else "no output")[:300]


def builder_command(source_dir: Path, output_dir: Path, precision: str, target: str, cache_dir: Path,
                    extra: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "aipc_directml.build", "-i", str(source_dir), "-o", str(output_dir),
               "-p", precision, "-e", target, "-c", str(cache_dir)]
    if extra:
        command += ["--extra_options", *(f"{k}={v}" for k, v in sorted(extra.items()))]
    return command


def _run(command: list[str], env: dict[str, str], log, tail: deque[str], on_line) -> int:
    """Run a child (the builder, AutoRound), its output to ``log`` and ``on_line``; killed on Ctrl-C."""
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, text=True, encoding="utf-8", errors="replace", bufsize=1)
    try:
        for line in process.stdout:
            log.write(line)
            tail.append(line)
            on_line(line)
        return process.wait()
    except BaseException:  # Ctrl-C or the core giving up: do not leave the child running
        process.kill()
        process.wait()
        raise


def _autoround(request, hf: dict[str, Any], recipe: dict[str, str], settings: dict[str, Any], scratch: Path, env, log,
               tail: deque[str]) -> tuple[int, Path, dict[str, Any]]:
    """AutoRound's exit code, its GPTQ checkpoint of the source in ``scratch`` (aipc_directml.autoround,
    a child process) and the calibration record for the manifest."""
    from aipc import calibration

    samples = int(recipe["num_samples"]) if "num_samples" in recipe else None
    data = calibration.resolve(recipe["dataset"], Path(request.source_dir), samples,
                               trust_remote_code=request.trust_remote_code, progress=request.progress)
    if data.texts is None:
        raise InvalidConfigError(f"dataset {data.name!r} is no file: directml's autoround takes -o dataset=self "
                                 "(the model's own text) or a text / .jsonl file")
    settings_file = scratch / "autoround.json"
    settings_file.write_text(json.dumps({**settings, "texts": data.texts}), encoding="utf-8")
    checkpoint = scratch / "autoround"
    layers = int(hf.get("num_hidden_layers") or 0)
    request.progress(f"Tuning {request.precision} rounding with AutoRound ({settings['iters']} steps per block)", 0.0)

    reported = set()

    def on_line(line: str) -> None:
        match = _BLOCK.search(line)
        if match and layers and match.group(1) not in reported:
            reported.add(match.group(1))
            done = int(match.group(1))
            request.progress(f"AutoRound block {done + 1}/{layers}", 0.8 * done / layers)

    command = [sys.executable, "-m", "aipc_directml.autoround", str(request.source_dir), str(checkpoint), str(settings_file)]
    code = _run(command, env, log, tail, on_line)
    found = sorted(checkpoint.rglob("config.json"))
    if code == 0 and not found:
        tail.append("RuntimeError: AutoRound wrote no checkpoint")
        code = 1
    return code, found[0].parent if found else checkpoint, data.record


def build(request, target: str):

    hf = _hf_config(request.source_dir)
    artifact.check_rotary(hf)
    tied = bool(hf.get("tie_word_embeddings", False))
    hidden = (hf.get("text_config") or hf).get("hidden_size")
    recipe = builder_options(request.precision, request.device, dict(request.options), tied,
                             hidden_size=int(hidden) if isinstance(hidden, int) else None)
    autoround = recipe.get("algo_config") == "autoround"
    settings, extra = autoround_settings(recipe, request.precision) if autoround else ({}, recipe)
    threads = thread_count(request.options)
    layers = int(hf.get("num_hidden_layers") or 0)
    out = Path(request.output_dir)
    scratch_root = Path(request.cache_dir)
    scratch_root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TQDM_DISABLE="1", PYTHONIOENCODING="utf-8")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=40)
    used: dict[str, Any] = {"target": target, **recipe}
    share = 0.0

    def on_line(line: str) -> None:
        match = _LAYER.search(line)
        if match and layers:
            done = int(match.group(1)) + 1
            request.progress(f"Building layer {done}/{layers}", share + (0.9 - share) * done / layers)

    with tempfile.TemporaryDirectory(prefix="builder-", dir=scratch_root) as scratch, \
            open(out / LOG_NAME, "w", encoding="utf-8") as log:
        source, code, stage = Path(request.source_dir), 0, "builder"
        if autoround:
            shown = {k: v for k, v in env.items() if k != "TQDM_DISABLE"}  # its progress bars are the progress
            code, source, used["calibration"] = _autoround(request, hf, recipe, {**settings, "threads": threads}, Path(scratch),
                                                           shown, log, tail)
            stage, share = "AutoRound", 0.8
        if code == 0:
            stage = "builder"
            request.progress(f"Building the ONNX model ({request.precision}, target {target}) with onnxruntime-genai's "
                             "builder", share)
            command = builder_command(source, out, request.precision, target, Path(scratch) / "builder", extra)
            code = _run(command, env, log, tail, on_line)
    if code != 0:
        reason = _failure(tail)
        log_copy = Path(request.cache_dir) / "last-build-failure.log"
        try:
            shutil.copyfile(out / LOG_NAME, log_copy)
        except OSError:
            log_copy = out / LOG_NAME
        if stage == "AutoRound":
            error = InvalidConfigError if reason.startswith("ValueError") else BackendError
            raise error(f"AutoRound failed: {reason} (log: {log_copy})")
        if "not currently supported" in reason or "NotImplementedError" in reason:
            raise UnsupportedArchitectureError(
                f"onnxruntime-genai's model builder cannot build this model ({hf.get('model_type') or 'unknown'} "
                f"architecture): {reason} (log: {log_copy})")
        if reason.startswith("ValueError"):
            raise InvalidConfigError(f"onnxruntime-genai's model builder refused the options: {reason} (log: {log_copy})")
        raise BackendError(f"onnxruntime-genai's model builder failed: {reason} (log: {log_copy})")
    if not (out / "genai_config.json").is_file():
        raise BackendError(f"onnxruntime-genai's model builder wrote no genai_config.json (log: {out / LOG_NAME})")
    seconds = time.perf_counter() - started
    request.progress(f"Built in {seconds:.1f} s", 1.0)
    versions = {"aipc-directml": __version__}
    versions.update({k: v for k, v in runtime_versions().items() if v != "not installed"})
    used["quantize_seconds"] = round(seconds, 1)
    return request.manifest(options=used, versions=versions)
