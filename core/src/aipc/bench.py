"""``aipc bench``: time to first token, prefill and decode rates, load times, memory and artifact
size for backend / precision combinations, measured side by side.

Runs are interleaved (A B C, B C A, ...) so machine drift affects every combination alike; prompts
have exactly the requested number of tokens and generation is forced to exactly
``new_tokens`` (EOS ignored); warm-up runs are not counted; figures are medians with spread.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, cache
from .errors import InvalidConfigError
from .types import GenerationConfig

Progress = Callable[..., None]


@dataclass
class Combo:
    backend: str
    precision: str
    device: str
    options: tuple[str, ...] = ()  # KEY=VALUE options of this combination only (a variant)

    @property
    def label(self) -> str:
        base = f"{self.backend}/{self.precision}/{self.device}"
        return f"{base} [{','.join(self.options)}]" if self.options else base


@dataclass
class Result:
    combo: Combo
    artifact_mb: float = 0.0
    quantize_s: float | None = None  # None: the artifact was already in the cache
    load_first_s: float = 0.0
    load_warm_s: float = 0.0
    compile_cache_was_empty: bool = False
    peak_rss_mb: float = 0.0
    rss_added_mb: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    token_latencies_ms: list[float] = field(default_factory=list)  # of the median-TTFT run
    prompt_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        def med(values):
            return round(statistics.median(values), 2) if values else None

        def spread(values):
            return round(statistics.stdev(values), 2) if len(values) > 1 else 0.0

        decode = med(self.decode_tps)
        ttft = med(self.ttft_ms)
        return {
            "backend": self.combo.backend, "precision": self.combo.precision, "device": self.combo.device,
            "options": list(self.combo.options), "label": self.combo.label,
            "ttft_ms": ttft, "ttft_ms_stdev": spread(self.ttft_ms),
            "prefill_tps": round(self.prompt_tokens / (ttft / 1000), 1) if ttft else None,
            "decode_tps": decode, "decode_tps_stdev": spread(self.decode_tps),
            "tpot_ms": round(1000 / decode, 2) if decode else None,
            "load_first_s": round(self.load_first_s, 3), "load_warm_s": round(self.load_warm_s, 3),
            "compile_cache_was_empty": self.compile_cache_was_empty, "quantize_s": self.quantize_s,
            "peak_rss_mb": round(self.peak_rss_mb, 1), "rss_added_mb": round(self.rss_added_mb, 1),
            "artifact_mb": round(self.artifact_mb, 1), "runs": len(self.decode_tps),
        }


def _memory() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MB, from /proc on Linux."""
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line[:5]] = int(line.split()[1]) / 1024
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    memory_gb = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "os": platform.platform(),
            "python": platform.python_version(), "threads": os.environ.get("AIPC_NUM_THREADS")}


def exact_prompt(model, tokens: int) -> str:
    """Raw text the model's tokenizer turns into exactly ``tokens`` tokens."""
    unit, filler = " the", " a"
    words = tokens
    for _ in range(8):
        text = "The" + unit * (words - 1)
        count = len(model.tokenize(text))
        if count == tokens:
            return text
        words += tokens - count
        if words < 1:
            break
    for pad in range(1, 4):  # fine-tune with a second filler word
        candidate = "The" + unit * (words - 1 - pad) + filler * pad
        if len(model.tokenize(candidate)) == tokens:
            return candidate
    raise InvalidConfigError(f"cannot build a prompt of exactly {tokens} tokens for this tokenizer")


def combinations(backends: tuple[str, ...], precisions: tuple[str, ...], device: str | None,
                 variants: tuple[str, ...] = ()) -> tuple[list[Combo], list[str]]:
    """Every requested (backend, precision) that exists on a present device, once per variant
    (a comma-separated ``KEY=VALUE`` list of options, "" for none), and notes on the rest."""
    from .plugins import registry

    reg = registry()
    names = backends or tuple(b.name for b in reg.working() if b.info.present)
    combos, notes = [], []
    for name in names:
        info = reg.get(name).info
        for precision in precisions or (info.default_precision,):
            devices = [d for d in info.devices if d.present and precision in d.precisions
                       and (device is None or d.name.lower() == device.lower())]
            if devices:
                for variant in variants or ("",):
                    options = tuple(part.strip() for part in variant.split(",") if part.strip())
                    combos.append(Combo(name, precision, devices[0].name, options))
            else:
                notes.append(f"skipped {name}/{precision}: not offered on a present device")
    return combos, notes


def run(model_name: str, combos: list[Combo], prompt_tokens: int = 128, new_tokens: int = 128, runs: int = 3,
        warmup: int = 1, options: list[str] | None = None, cold: bool = False, progress: Progress = lambda *a, **k: None,
        ) -> dict[str, Any]:
    """Measure every combination; return the JSON-able report."""
    import shutil

    from . import runtime

    if not combos:
        raise InvalidConfigError("nothing to benchmark: no backend/precision combination is available")
    if runs < 1 or warmup < 0 or prompt_tokens < 1 or new_tokens < 2:
        raise InvalidConfigError("runs >= 1, warmup >= 0, prompt tokens >= 1 and new tokens >= 2 are needed")
    settings = {"max_new_tokens": new_tokens, "ignore_eos": True}
    GenerationConfig(**settings)
    results, models, prompts = [], [], []
    for combo in combos:
        result = Result(combo)
        compile_dir = cache.area("compile", combo.backend)
        if cold:
            shutil.rmtree(compile_dir, ignore_errors=True)
        result.compile_cache_was_empty = not any(compile_dir.glob("*")) if compile_dir.exists() else True
        started = time.perf_counter()
        combo_options = [*(options or []), *combo.options]
        artifact = runtime.quantize(model_name, combo.backend, combo.precision, combo.device, combo_options,
                                    progress=progress)
        quantize_s = time.perf_counter() - started
        result.quantize_s = round(quantize_s, 2) if quantize_s > 2 else None
        result.artifact_mb = cache.folder_size(artifact) / 1e6
        rss_before, _ = _memory()
        _reset_peak()
        progress(f"Loading {combo.label} (first)")
        first = runtime.load(model_name, combo.backend, combo.precision, combo.device, combo_options)
        result.load_first_s = first.load_s
        first.close()
        del first
        progress(f"Loading {combo.label} (warm)")
        model = runtime.load(model_name, combo.backend, combo.precision, combo.device, combo_options)
        result.load_warm_s = model.load_s
        prompt = exact_prompt(model, prompt_tokens)
        for _ in range(warmup):
            progress(f"Warm-up {combo.label}")
            _ = list(model.generate(prompt, raw=True, **settings))
        rss_after, peak = _memory()
        result.peak_rss_mb, result.rss_added_mb = peak, rss_after - rss_before
        result.prompt_tokens = prompt_tokens
        results.append(result)
        models.append(model)
        prompts.append(prompt)
    latencies: list[list[tuple[float, list[float]]]] = [[] for _ in combos]
    for index in range(runs):
        shift = index % len(combos)  # interleaved, each round starting one combination later: A B C, B C A, ...
        for step, i in enumerate([*range(shift, len(combos)), *range(shift)]):
            model, prompt, result = models[i], prompts[i], results[i]
            progress(f"Run {index + 1}/{runs}: {result.combo.label}", (index * len(combos) + step) / (runs * len(combos)))
            _ = list(model.generate(prompt, raw=True, **settings))
            usage = model.usage
            if usage.generated_tokens != new_tokens:
                raise InvalidConfigError(f"{result.combo.label} generated {usage.generated_tokens} of {new_tokens} tokens")
            result.ttft_ms.append(usage.time_to_first_token_s * 1000)
            result.decode_tps.append(usage.decode_tokens_per_s)
            times = usage.token_times_s
            latencies[i].append((usage.time_to_first_token_s, [1000 * (b - a) for a, b in zip(times, times[1:])]))
    for result, runs_of_combo in zip(results, latencies):
        runs_of_combo.sort(key=lambda item: item[0])
        result.token_latencies_ms = [round(v, 3) for v in runs_of_combo[len(runs_of_combo) // 2][1]]
    from .plugins import registry

    versions = {c.backend: registry().get(c.backend).info.runtime_versions for c in combos}
    return {
        "aipc_version": __version__, "model": model_name, "machine": machine(), "versions": versions,
        "settings": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "runs": runs, "warmup": warmup,
                     "options": list(options or []), "interleaved": True},
        "results": [{**r.summary(), "token_latencies_ms": r.token_latencies_ms} for r in results],
    }


def table(report: dict[str, Any]):
    """A rich Table of the report."""
    from rich.markup import escape
    from rich.table import Table

    grid = Table(title=f"aipc bench: {report['model']} ({report['settings']['prompt_tokens']} prompt tokens, "
                       f"{report['settings']['new_tokens']} new, {report['settings']['runs']} runs)")
    columns = [("combination", None), ("TTFT ms", "ttft_ms"), ("prefill tok/s", "prefill_tps"),
               ("decode tok/s", "decode_tps"), ("± ", "decode_tps_stdev"), ("TPOT ms", "tpot_ms"),
               ("load s (first/warm)", None), ("peak MB", "peak_rss_mb"), ("artifact MB", "artifact_mb")]
    for title, _ in columns:
        grid.add_column(title, justify="left" if title == "combination" else "right")
    for r in report["results"]:
        row = [escape(r["label"])]  # "[options]" is not rich markup
        for title, key in columns[1:]:
            row.append(f"{r['load_first_s']:.2f}/{r['load_warm_s']:.2f}" if key is None else str(r[key]))
        grid.add_row(*row)
    return grid


def plot(report: dict[str, Any], path: Path) -> None:
    """Per-token latency over the generation, and bars of decode tok/s and TTFT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    labels = [r["label"].replace(f"/{r['device']}", "", 1) for r in results]
    figure, (lines, speed, first) = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [2, 1, 1]})
    for label, r in zip(labels, results):
        lines.plot(range(2, len(r["token_latencies_ms"]) + 2), r["token_latencies_ms"], label=label, linewidth=1)
    lines.set(title="Per-token latency (median run)", xlabel="output token", ylabel="ms")
    highest = max((max(r["token_latencies_ms"], default=0) for r in results), default=0)
    lines.set_ylim(0, highest * 1.3 or None)  # room above the lines for the legend
    lines.legend(fontsize="small", loc="upper center", ncol=3)
    speed.bar(labels, [r["decode_tps"] for r in results], yerr=[r["decode_tps_stdev"] for r in results], color="tab:blue")
    speed.set(title="Decode tokens/s (higher is better)")
    first.bar(labels, [r["ttft_ms"] for r in results], yerr=[r["ttft_ms_stdev"] for r in results], color="tab:orange")
    first.set(title=f"Time to first token, ms ({report['settings']['prompt_tokens']}-token prompt)")
    for axis in (speed, first):
        axis.tick_params(axis="x", rotation=30)
    figure.suptitle(f"aipc bench: {report['model']} on {report['machine']['cpu']} ({report['machine']['cores']} cores)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


