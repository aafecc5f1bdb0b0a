"""``aipc bench``: time to first token, prefill and decode rates, load times, memory and artifact
size for backend / precision combinations, measured side by side.

Runs are interleaved (A B C, B C A, ...) so machine drift affects every combination alike; prompts
have exactly the requested number of tokens and generation is forced to exactly
``new_tokens`` (EOS ignored); warm-up runs are not counted; figures are medians with spread.

Two scenarios. One prompt (the default): the same raw prompt every run, with prefix reuse off
(``cache_slots=0``) unless asked for, so TTFT is a whole prefill. A conversation (``turns`` > 0):
each run is one growing chat through ``Model.chat``, every turn adding a user message of
``prompt_tokens`` tokens and an answer of ``new_tokens``, reported per turn (prompt tokens, tokens
reused from the backend's prefix cache, TTFT, decode tok/s); combinations differing only in
``cache_slots`` (reuse on, 0 = off) show what the reuse saves.

Memory: a combination's peak and added RSS are measured over its loads and warm-up while no other
combination is loaded (each is released before the next is measured, and loaded again for the runs).
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
from .constraints import Constraint
from .types import GenerationConfig, Usage

Progress = Callable[..., None]


@dataclass
class Combo:
    backend: str
    precision: str
    device: str
    options: tuple[str, ...] = ()  # KEY=VALUE options of this combination only (a variant)
    cache_slots: int | None = None  # prefix-cache slots to load with; None: the scenario's default
    constraint: Constraint | None = None  # generate under this constraint (--schema)

    @property
    def label(self) -> str:
        base = f"{self.backend}/{self.precision}/{self.device}"
        extra = [*self.options, *([f"cache_slots={self.cache_slots}"] if self.cache_slots is not None else []),
                 *([self.constraint.kind] if self.constraint else [])]
        return f"{base} [{','.join(extra)}]" if extra else base


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
    cache_slots: int = 0
    turns: list[list[Usage]] = field(default_factory=list)  # conversation scenario: per turn, one Usage per run

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
            "artifact_mb": round(self.artifact_mb, 1), "runs": len(self.decode_tps), "cache_slots": self.cache_slots,
            **({"turns": [_turn(n, usages) for n, usages in enumerate(self.turns, 1)]} if self.turns else {}),
        }


def _turn(number: int, usages: list[Usage]) -> dict[str, Any]:
    """One turn of the conversation scenario: medians over the runs."""
    def med(values):
        return round(statistics.median(values), 2)

    return {"turn": number, "prompt_tokens": int(med([u.prompt_tokens for u in usages])),
            "cached_tokens": int(med([u.cached_tokens for u in usages])),
            "ttft_ms": med([u.time_to_first_token_s * 1000 for u in usages]),
            "decode_tps": med([u.decode_tokens_per_s for u in usages])}


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


def variant_options(variant: str) -> tuple[str, ...]:
    """``"a=1,b=x:y,z:w"`` as ``("a=1", "b=x:y,z:w")``: a comma starts a new option only where a
    ``KEY=`` follows, so a value may hold commas (directml's ``matmul_mixed_precision``)."""
    options: list[str] = []
    for part in (part.strip() for part in variant.split(",")):
        if options and part and "=" not in part:
            options[-1] += "," + part
        elif part:
            options.append(part)
    return tuple(options)


def combinations(backends: tuple[str, ...], precisions: tuple[str, ...], device: str | None,
                 variants: tuple[str, ...] = (), cache_slots: tuple[int, ...] = (),
                 constraint: Constraint | None = None) -> tuple[list[Combo], list[str]]:
    """Every requested (backend, precision) that exists on a present device, once per variant
    (a comma-separated ``KEY=VALUE`` list of options, "" for none) and per number of prefix-cache
    slots, unconstrained and (given a ``constraint``) under it, and notes on the rest."""
    from .plugins import registry
    from .prefix import cache_slots as checked_slots

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
                    options = variant_options(variant)
                    for slots in cache_slots or (None,):
                        slots = None if slots is None else checked_slots(slots)
                        for constrained in (None, constraint) if constraint else (None,):
                            combos.append(Combo(name, precision, devices[0].name, options, slots, constrained))
            else:
                notes.append(f"skipped {name}/{precision}: not offered on a present device")
    return combos, notes


def run(model_name: str, combos: list[Combo], prompt_tokens: int = 128, new_tokens: int = 128, runs: int = 3,
        warmup: int = 1, options: list[str] | None = None, cold: bool = False, progress: Progress = lambda *a, **k: None,
        turns: int = 0) -> dict[str, Any]:
    """Measure every combination; return the JSON-able report. ``turns`` > 0: the conversation
    scenario (``turns`` turns per run), else one prompt."""
    if not combos:
        raise InvalidConfigError("nothing to benchmark: no backend/precision combination is available")
    if runs < 1 or warmup < 0 or prompt_tokens < 1 or new_tokens < 2 or turns < 0:
        raise InvalidConfigError("runs >= 1, warmup >= 0, prompt tokens >= 1, new tokens >= 2 and turns >= 0 are needed")
    settings = {"max_new_tokens": new_tokens, "ignore_eos": True}
    GenerationConfig(**settings)
    results, models = [], []
    for combo in combos:
        result, model, rss_before = _prepare(model_name, combo, options, cold, turns, progress)
        text = exact_prompt(model, prompt_tokens)
        _warm_up(model, text, combo, warmup, turns, settings, progress)
        rss_after, peak = _memory()
        result.peak_rss_mb, result.rss_added_mb = peak, rss_after - rss_before
        result.prompt_tokens = prompt_tokens
        result.turns = [[] for _ in range(turns)]
        if len(combos) > 1:  # measure the next combination's memory without this one loaded
            _release(model)
            model = None
        results.append(result)
        models.append([model, text])
    for entry, result in zip(models, results):  # the interleaved runs need every model: load them again
        if entry[0] is None:
            progress(f"Loading {result.combo.label} (for the runs)")
            entry[0] = _load(model_name, result.combo, options, result.cache_slots)
            _warm_up(entry[0], entry[1], result.combo, warmup, turns, settings, progress)
    latencies: list[list[tuple[float, list[float]]]] = [[] for _ in combos]
    for index in range(runs):
        shift = index % len(combos)  # interleaved, each round starting one combination later: A B C, B C A, ...
        for step, i in enumerate([*range(shift, len(combos)), *range(shift)]):
            (model, text), result = models[i], results[i]
            progress(f"Run {index + 1}/{runs}: {result.combo.label}", (index * len(combos) + step) / (runs * len(combos)))
            if turns:
                usages = _conversation(model, text, turns, _settings(settings, result.combo), f"run {index + 1}")
                for per_turn, usage in zip(result.turns, usages):
                    per_turn.append(usage)
            else:
                _ = list(model.generate(text, raw=True, **_settings(settings, result.combo)))
                usages = [model.usage]
            usage = usages[-1]  # one prompt: the run; a conversation: its last turn
            _check(result, usages, new_tokens)
            result.ttft_ms.append(usage.time_to_first_token_s * 1000)
            result.decode_tps.append(statistics.median(u.decode_tokens_per_s for u in usages))
            times = usage.token_times_s
            latencies[i].append((usage.time_to_first_token_s, [1000 * (b - a) for a, b in zip(times, times[1:])]))
    for result, runs_of_combo in zip(results, latencies):
        runs_of_combo.sort(key=lambda item: item[0])
        result.token_latencies_ms = [round(v, 3) for v in runs_of_combo[len(runs_of_combo) // 2][1]]
        if turns:  # prefill rate of the last turn: of the tokens really prefilled
            last = result.turns[-1]
            result.prompt_tokens = int(statistics.median(u.prompt_tokens - u.cached_tokens for u in last))
    from .plugins import registry

    versions = {c.backend: registry().get(c.backend).info.runtime_versions for c in combos}
    return {
        "aipc_version": __version__, "model": model_name, "machine": machine(), "versions": versions,
        "settings": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "runs": runs, "warmup": warmup,
                     "options": list(options or []), "interleaved": True, "turns": turns},
        "results": [{**r.summary(), "token_latencies_ms": r.token_latencies_ms} for r in results],
    }


def _prepare(model_name: str, combo: Combo, options: list[str] | None, cold: bool, turns: int, progress: Progress):
    """Quantize (if needed) and load ``combo`` twice (first and warm load): the Result so far, the
    warm model and the RSS before loading."""
    import shutil

    from . import runtime

    result = Result(combo)
    # one prompt repeated: reuse off unless asked for (else TTFT would be one token's prefill)
    result.cache_slots = combo.cache_slots if combo.cache_slots is not None else (1 if turns else 0)
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
    first = _load(model_name, combo, options, result.cache_slots)
    result.load_first_s = first.load_s
    _release(first)
    del first
    progress(f"Loading {combo.label} (warm)")
    model = _load(model_name, combo, options, result.cache_slots)
    result.load_warm_s = model.load_s
    return result, model, rss_before


def _load(model_name: str, combo: Combo, options: list[str] | None, cache_slots: int):
    from . import runtime

    return runtime.load(model_name, combo.backend, combo.precision, combo.device, [*(options or []), *combo.options],
                        cache_slots=cache_slots)


def _release(model) -> None:
    """Close ``model`` and hand the freed memory back to the system, so that the next combination's
    memory figures do not count it."""
    import gc

    model.close()
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap otherwise
    except (OSError, AttributeError):
        pass


def _warm_up(model, text: str, combo: Combo, warmup: int, turns: int, settings: dict[str, Any],
             progress: Progress) -> None:
    for index in range(warmup):
        progress(f"Warm-up {combo.label}")
        if turns:  # two turns: the cold path and the continued one
            _conversation(model, text, min(turns, 2), _settings(settings, combo), f"warm-up {index + 1}")
        else:
            _ = list(model.generate(text, raw=True, **_settings(settings, combo)))


def _conversation(model, text: str, turns: int, settings: dict[str, Any], tag: str) -> list[Usage]:
    """One growing chat: ``turns`` user messages of ``text`` (the first one tagged, so runs do not
    share more than the template's start and the default system prompt), each answered through
    ``Model.chat`` and the answer kept in the history, as a chat client does. Usage per turn."""
    messages: list[dict[str, str]] = []
    usages = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"({tag}) {text}" if turn == 0 else text})
        answer = "".join(model.chat(messages, **settings))
        messages.append({"role": "assistant", "content": answer})
        usages.append(model.usage)
    return usages


def _settings(settings: dict[str, Any], combo: Combo) -> dict[str, Any]:
    return {**settings, "constraint": combo.constraint} if combo.constraint else settings


def _check(result: Result, usages: list[Usage], new_tokens: int) -> None:
    for turn, usage in enumerate(usages, 1):
        if result.combo.constraint is not None:  # constrained text ends with its grammar, not at new_tokens
            if usage.generated_tokens < 2:
                raise InvalidConfigError(f"{result.combo.label} generated {usage.generated_tokens} token(s) under "
                                         "the constraint: too few to time decoding")
            continue
        if usage.generated_tokens != new_tokens:
            where = f" at turn {turn} ({usage.prompt_tokens} prompt tokens)" if len(usages) > 1 else ""
            hint = ": the model's context is too short for this conversation" if where else ""
            raise InvalidConfigError(f"{result.combo.label} generated {usage.generated_tokens} of {new_tokens} "
                                     f"tokens{where}{hint}")


def table(report: dict[str, Any]):
    """A rich Table of the report (the conversation scenario: one row per turn)."""
    from rich.markup import escape
    from rich.table import Table

    if report["settings"].get("turns"):
        return _turns_table(report)

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


def _turns_table(report: dict[str, Any]):
    from rich.markup import escape
    from rich.table import Table

    settings = report["settings"]
    grid = Table(title=f"aipc bench: {report['model']}, a conversation of {settings['turns']} turns "
                       f"({settings['prompt_tokens']} user tokens and {settings['new_tokens']} answer tokens a turn, "
                       f"{settings['runs']} runs)")
    for title in ("combination", "turn", "prompt tokens", "cached tokens", "TTFT ms", "decode tok/s"):
        grid.add_column(title, justify="left" if title == "combination" else "right")
    for r in report["results"]:
        for t in r["turns"]:
            grid.add_row(escape(r["label"]) if t["turn"] == 1 else "", str(t["turn"]), str(t["prompt_tokens"]),
                         str(t["cached_tokens"]), str(t["ttft_ms"]), str(t["decode_tps"]),
                         end_section=t["turn"] == len(r["turns"]))
    return grid


def plot(report: dict[str, Any], path: Path) -> None:
    """Per-token latency over the generation, and bars of decode tok/s and TTFT (the
    conversation scenario: TTFT, prompt and cached tokens, and decode tok/s per turn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report["settings"].get("turns"):
        return _plot_turns(report, path, plt)
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




def _plot_turns(report: dict[str, Any], path: Path, plt) -> None:
    results = report["results"]
    figure, (first, tokens, speed) = plt.subplots(1, 3, figsize=(16, 5))
    for r in results:
        label = r["label"].replace(f"/{r['device']}", "", 1)
        turns = [t["turn"] for t in r["turns"]]
        line, = first.plot(turns, [t["ttft_ms"] for t in r["turns"]], marker="o", label=label)
        tokens.plot(turns, [t["prompt_tokens"] for t in r["turns"]], linestyle=":", color=line.get_color())
        tokens.plot(turns, [t["cached_tokens"] for t in r["turns"]], marker="o", color=line.get_color(), label=label)
        speed.plot(turns, [t["decode_tps"] for t in r["turns"]], marker="o", color=line.get_color(), label=label)
    settings = report["settings"]
    first.set(title="Time to first token, ms", xlabel="turn", ylim=(0, None))
    tokens.set(title="Cached tokens (prompt tokens dotted)", xlabel="turn", ylim=(0, None))
    speed.set(title="Decode tokens/s", xlabel="turn", ylim=(0, None))
    for axis in (first, tokens, speed):
        axis.set_xticks(range(1, settings["turns"] + 1))
        axis.legend(fontsize="small")
    figure.suptitle(f"aipc bench: {report['model']}, {settings['turns']} turns of {settings['prompt_tokens']} + "
                    f"{settings['new_tokens']} tokens, on {report['machine']['cpu']} ({report['machine']['cores']} cores)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
