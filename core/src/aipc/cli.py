"""The ``aipc`` command line (click). Heavy modules are imported inside the commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import AipcError

BACKEND_ORDER_HELP = (
    "Default: the installed backend with a present accelerator (NPU, GPU) and the highest "
    "priority (npu > directml > openvino), else the best of aipc's own backends on the CPU (a "
    "third-party plugin only when none of those runs); see `aipc backends`."
)


class AipcGroup(click.Group):
    """Turns every failure into one line on stderr and a non-zero exit (AIPC_DEBUG=1 shows tracebacks)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AipcError as error:
            self._fail(str(error), error.exit_code)
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort, BrokenPipeError):
            raise  # BrokenPipeError (`aipc backends | head -n 1`): click exits 1 quietly, as Python's docs advise
        except Exception as error:
            if os.environ.get("AIPC_DEBUG"):
                raise
            first = (str(error).strip().splitlines() or [""])[0]
            self._fail(f"{type(error).__name__}: {first} (set AIPC_DEBUG=1 for the traceback)", 1)

    @staticmethod
    def _fail(message: str, code: int) -> None:
        click.echo(f"Error: {message}", err=True)
        sys.exit(code)


@click.group(cls=AipcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aipc")
def cli() -> None:
    """Run chat models (Phi-3 first) locally on this PC's NPU, GPU or CPU.

    \b
    aipc run "What is the capital of France?"       # default model and backend
    aipc run phi-3-mini-4k-instruct "Hi" --backend openvino --precision int4
    aipc backends                                    # what is installed and present
    aipc chat                                        # a conversation

    Models are catalogue names (`aipc models`), Hugging Face ids, local Hugging Face
    folders, GGUF files or quantized artifact folders. Everything derived is cached under
    AIPC_HOME (default: the platform's cache folder). Backends are plugins; AIPC_PLUGINS
    allow-lists and AIPC_DISABLE_PLUGINS blocks them (comma-separated names).
    """


def _registry():
    from .plugins import registry

    return registry()


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# ---------------------------------------------------------------------------------- backends


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def backends(as_json: bool) -> None:
    """List installed backends, their devices (present or not, and why) and precisions."""
    reg = _registry()
    rows = []
    for backend in sorted(reg.backends.values(), key=lambda b: b.name):
        row = {"name": backend.name, "ok": backend.ok, "error": backend.error}
        if backend.ok:
            info = backend.info
            row.update(
                version=info.version, description=info.description, priority=info.priority,
                default_precision=info.default_precision, precisions=list(info.precisions),
                devices=[{"name": d.name, "present": d.present, "reason": d.reason, "accelerator": d.accelerator,
                          "precisions": list(d.precisions)} for d in info.devices],
                capabilities=info.capabilities.__dict__, runtime_versions=info.runtime_versions,
                options=info.options, option_pattern=info.option_pattern,  # options None: not declared, unchecked
            )
        rows.append(row)
    try:
        default = reg.default().name
    except AipcError:
        default = None
    if as_json:
        _print_json({"default": default, "backends": rows})
        return
    if not rows:
        click.echo("No backends installed (or all filtered by AIPC_PLUGINS / AIPC_DISABLE_PLUGINS).")
        return
    for row in rows:
        mark = " (default)" if row["name"] == default else ""
        if not row["ok"]:
            click.echo(f"{row['name']}: BROKEN - {row['error']}")
            continue
        click.echo(f"{row['name']} {row['version']}{mark} - {row['description']}")
        for dev in row["devices"]:
            state = "present" if dev["present"] else f"absent: {dev['reason']}"
            click.echo(f"    {dev['name']:<8} {', '.join(dev['precisions']):<24} {state}")
        caps = row["capabilities"]
        click.echo(f"    prefix cache: {'yes' if caps.get('prefix_cache') else 'no'}; constrained output: "
                   f"{', '.join(caps.get('constraints') or ()) or 'none'}")
        options = row["options"]
        names = "not declared (passed unchecked)" if options is None else ", ".join(options) or "none"
        click.echo(f"    options (-o KEY=VALUE; help: --json): {names}")


# ---------------------------------------------------------------------------------- shared options


def model_options(function):
    """Options shared by commands that load a model."""
    for option in reversed([
        click.option("--backend", "-b", help=f"Backend name. {BACKEND_ORDER_HELP}"),
        click.option("--precision", "-p", help="fp32, fp16, int8 or int4. Default: the backend's recommended one."),
        click.option("--device", "-d", help="Device of the backend (CPU, GPU, NPU, AUTO...). Default: its first present one."),
        click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
                     help="Backend option (see `aipc backends --json`), repeatable."),
        click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model folder or hub."),
    ]):
        function = option(function)
    return function


def generation_options(function):
    for option in reversed([
        click.option("--system", "-s", help="System message."),
        click.option("--max-new-tokens", "-n", type=int, help="Tokens to generate at most (prompt excluded). [default: 256]"),
        click.option("--temperature", "-t", type=float, help="Sampling temperature; 0 = greedy. [default: 0]"),
        click.option("--top-p", type=float, help="Nucleus sampling mass in (0, 1]."),
        click.option("--top-k", type=int, help="Sample from the K likeliest tokens (0 = off)."),
        click.option("--seed", type=int, help="Random seed for sampling."),
        click.option("--repetition-penalty", type=float, help="Penalty > 1 discourages repeats."),
        click.option("--stop", multiple=True, help="Stop when this text appears (repeatable)."),
        click.option("--ignore-eos", is_flag=True, default=None,
                     help="Never stop at the end token: exactly --max-new-tokens (benchmarks; as llama.cpp's)."),
        click.option("--format", "format_", type=click.Choice(["json"]), help="Answer with a JSON object."),
        click.option("--schema", metavar="FILE|JSON", help="Answer with JSON valid under this JSON Schema."),
        click.option("--regex", metavar="PATTERN", help="Answer with text matching this regular expression."),
        click.option("--grammar", metavar="FILE|GBNF", help="Answer with text from this GBNF grammar (rule 'root')."),
    ]):
        function = option(function)
    return function


def _text_or_file(value: str) -> str:
    path = Path(value)
    try:
        return path.read_text() if len(value) < 4096 and path.is_file() else value
    except OSError as error:
        raise click.ClickException(f"cannot read {value}: {error.strerror}") from None


def _constraint(format_, schema, regex, grammar):
    """The --format / --schema / --regex / --grammar option as a Constraint, checked now."""
    given = [name for name, value in (("--format", format_), ("--schema", schema), ("--regex", regex),
                                      ("--grammar", grammar)) if value]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} exclude each other: give one")
    from .constraints import Constraint

    if format_:
        return Constraint.json()
    if schema:
        text = _text_or_file(schema)
        if text is schema and not schema.lstrip().startswith(("{", "true", "false")):
            raise click.ClickException(f"--schema {schema}: no such file, and not a JSON schema either")
        return Constraint("json_schema", text)
    if regex:
        return Constraint("regex", regex)
    if grammar:
        return Constraint("grammar", _text_or_file(grammar))
    return None


def _settings(format_=None, schema=None, regex=None, grammar=None, **values) -> dict:
    stop = values.pop("stop", ()) or None
    constraint = _constraint(format_, schema, regex, grammar)
    return {**{k: v for k, v in values.items() if v is not None}, **({"stop": tuple(stop)} if stop else {}),
            **({"constraint": constraint} if constraint else {})}


def _split_model_prompt(words: tuple[str, ...]) -> tuple[str | None, str]:
    if len(words) == 1:
        return None, words[0]
    if len(words) == 2:
        return words[0], words[1]
    raise click.UsageError("expected [MODEL] PROMPT (quote the prompt)")


def _load(model, backend, precision, device, options, trust_remote_code, show_progress):
    from . import runtime
    from .progress import reporter
    from .sources import DEFAULT_MODEL

    with reporter(show_progress) as progress:
        return runtime.load(model or DEFAULT_MODEL, backend=backend, precision=precision, device=device,
                            options=list(options), trust_remote_code=trust_remote_code, progress=progress)


def _usage_line(model) -> str:
    u = model.usage
    return (f"{model.backend}/{model.device}/{model.precision}: prompt {u.prompt_tokens} tok "
            f"({u.cached_tokens} reused), "
            f"generated {u.generated_tokens} tok, first token {u.time_to_first_token_s * 1000:.0f} ms, "
            f"{u.decode_tokens_per_s:.1f} tok/s, load {model.load_s:.2f} s, finish {u.finish_reason}")


# ---------------------------------------------------------------------------------- run / chat


@cli.command()
@click.argument("words", nargs=-1, required=True, metavar="[MODEL] PROMPT")
@model_options
@generation_options
@click.option("--no-stream", is_flag=True, help="Print the answer when complete instead of as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text, usage, model) and no progress.")
@click.option("--verbose", "-v", is_flag=True, help="Print token counts and timings on stderr.")
def run(words, backend, precision, device, options, trust_remote_code, system, no_stream, as_json, verbose, **gen):
    """Answer PROMPT with MODEL (default: smollm2-135m-instruct), streaming the text.

    The first run of a model on a backend and precision quantizes it into the cache (with
    progress); later runs reuse it. PROMPT "-" reads the prompt from stdin. Ctrl-C stops.
    """
    model_name, prompt = _split_model_prompt(words)
    if prompt == "-":
        prompt = sys.stdin.read()
    settings = _settings(**gen)
    from .types import GenerationConfig

    GenerationConfig.from_options(**settings)  # reject bad values before any slow work
    model = _load(model_name, backend, precision, device, options, trust_remote_code, not as_json)
    pieces = model.generate(prompt, system=system, **settings)
    if as_json or no_stream:
        text = "".join(pieces)
        if as_json:
            _print_json({"model": model.name, "backend": model.backend, "device": model.device,
                         "precision": model.precision, "text": text, "load_s": round(model.load_s, 3),
                         "usage": model.usage.as_dict()})
        else:
            click.echo(text)
    else:
        for piece in pieces:
            click.echo(piece, nl=False)
        click.echo()
    if verbose:
        click.echo(_usage_line(model), err=True)


@cli.command()
@click.argument("model_name", required=False, metavar="[MODEL]")
@model_options
@generation_options
@click.option("--verbose", "-v", is_flag=True, help="Print token counts and timings after each answer.")
def chat(model_name, backend, precision, device, options, trust_remote_code, system, verbose, **gen):
    """Talk with MODEL; the conversation is kept. /exit or Ctrl-D ends, Ctrl-C stops an answer."""
    settings = _settings(**gen)
    from .types import GenerationConfig

    GenerationConfig.from_options(**settings)
    model = _load(model_name, backend, precision, device, options, trust_remote_code, True)
    messages = [{"role": "system", "content": system}] if system else []
    click.echo(f"Chatting with {model.name} on {model.backend}/{model.device}/{model.precision}. /exit to quit.", err=True)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            click.echo()
            return
        if line.strip() in ("/exit", "/quit", "/bye"):
            return
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        answer = []
        try:
            for piece in model.chat(messages, **settings):
                answer.append(piece)
                click.echo(piece, nl=False)
        except KeyboardInterrupt:
            click.echo(" [stopped]", err=True)
        click.echo()
        messages.append({"role": "assistant", "content": "".join(answer)})
        if verbose:
            click.echo(_usage_line(model), err=True)


# ---------------------------------------------------------------------------------- quantize / models


@cli.command()
@click.argument("model_name", metavar="MODEL")
@model_options
@click.option("--output", type=click.Path(path_type=Path), help="Write the artifact here instead of the cache.")
@click.option("--force", is_flag=True, help="Quantize again even if the cache has it.")
@click.option("--json", "as_json", is_flag=True, help="Print the artifact's path and manifest as JSON.")
def quantize(model_name, backend, precision, device, options, trust_remote_code, output, force, as_json):
    """Quantize MODEL for a backend, into the cache (or --output).

    The artifact is written to a temporary folder and renamed into place when complete, with
    an aipc.json manifest (backend, precision, device, source fingerprint, options, versions).
    """
    from . import runtime
    from .progress import reporter
    from .types import Manifest

    with reporter(not as_json) as progress:
        path = runtime.quantize(model_name, backend=backend, precision=precision, device=device,
                                options=list(options), output=output, trust_remote_code=trust_remote_code,
                                progress=progress, force=force)
    if as_json:
        _print_json({"path": str(path), "manifest": Manifest.read(path).__dict__})
    else:
        click.echo(str(path))


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def models(ctx, as_json: bool) -> None:
    """List the model catalogue and what the cache holds (with sizes)."""
    if ctx.invoked_subcommand:
        return
    from . import cache
    from .sources import CATALOGUE

    entries = cache.entries()
    if as_json:
        _print_json({"cache": str(cache.home()),
                     "catalogue": {name: entry.description for name, entry in CATALOGUE.items()},
                     "cached": [{**e.__dict__, "path": str(e.path)} for e in entries]})
        return
    click.echo("Catalogue:")
    for name, entry in CATALOGUE.items():
        click.echo(f"  {name:<26} {entry.description}")
    click.echo(f"Cache ({cache.home()}):")
    if not entries:
        click.echo("  (empty)")
    for e in entries:
        what = f"{e.backend}/{e.device}/{e.precision} of {e.source}" if e.kind == "artifact" else "source model"
        click.echo(f"  {e.name:<58} {e.size / 1e6:9.1f} MB  {what}")


@models.command("rm")
@click.argument("names", nargs=-1, required=True)
def models_rm(names) -> None:
    """Remove cached entries by the names `aipc models` shows (or all: `aipc models rm all`)."""
    import shutil

    from . import cache
    from .errors import ModelNotFoundError

    entries = cache.entries()
    chosen = entries if names == ("all",) else [e for e in entries if e.name in names or str(e.path) in names]
    missing = set(names) - {"all"} - {e.name for e in chosen} - {str(e.path) for e in chosen}
    if missing:
        raise ModelNotFoundError(f"not in the cache: {', '.join(sorted(missing))}")
    for entry in chosen:
        shutil.rmtree(entry.path)
        click.echo(f"removed {entry.name} ({entry.size / 1e6:.1f} MB)")


# ---------------------------------------------------------------------------------- bench


@cli.command()
@click.argument("model_name", required=False, metavar="[MODEL]")
@click.option("--backend", "-b", "backends_", multiple=True, help="Backend(s) (repeatable). Default: every present one.")
@click.option("--precision", "-p", "precisions", multiple=True, help="Precision(s) (repeatable). Default: each backend's.")
@click.option("--device", "-d", help="Device. Default: each backend's first present device offering the precision.")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Backend option, repeatable.")
@click.option("--variant", "variants", multiple=True, metavar="K=V[,K=V]",
              help="Options of one variant (repeatable): each backend/precision is measured once per variant. "
              "A comma not followed by KEY= stays in the value (X=a:1,b:2 is one option).")
@click.option("--prompt-tokens", default=128, show_default=True, type=int,
              help="Exact prompt length in tokens (with --turns: the user message added each turn).")
@click.option("--new-tokens", default=128, show_default=True, type=int,
              help="Tokens generated per run (with --turns: per answer), EOS ignored.")
@click.option("--turns", default=0, show_default=True, type=int,
              help="Benchmark a conversation instead of one prompt: each run is a chat of this many turns "
                   "through Model.chat, reported per turn (prompt and reused tokens, TTFT, decode tok/s).")
@click.option("--cache-slots", "cache_slots", multiple=True, type=int, metavar="N",
              help="Prefix-cache slots to load with (repeatable: each value is measured side by side; 0 = reuse "
                   "off). Default: 0 for one prompt (its TTFT is then a whole prefill); with --turns, 1 and 0.")
@click.option("--schema", "bench_schema", metavar="FILE|JSON",
              help="Also measure each combination under this JSON Schema, side by side with unconstrained "
                   "(constrained decode speed; the answer ends where the schema's JSON does).")
@click.option("--runs", default=3, show_default=True, type=int, help="Measured runs per combination (interleaved).")
@click.option("--warmup", default=1, show_default=True, type=int, help="Uncounted runs per combination first.")
@click.option("--cold", is_flag=True, help="Empty the backends' compile caches first, so the first load compiles.")
@click.option("--json", "json_file", type=click.Path(path_type=Path), help="Write the full report (JSON) here.")
@click.option("--plot", "plot_file", type=click.Path(path_type=Path), help="Write latency and throughput charts (PNG).")
def bench(model_name, backends_, precisions, device, options, variants, prompt_tokens, new_tokens, turns, cache_slots,
          bench_schema, runs, warmup, cold, json_file, plot_file) -> None:
    """Benchmark backends and precisions side by side on MODEL (default: smollm2-135m-instruct):
    load time (first and warm), time to first token, prefill and decode tokens/s, time per output
    token, peak memory and artifact size; with --turns, per turn of a growing conversation with
    prefix reuse on and off. Set AIPC_NUM_THREADS to fix the thread count."""
    from . import bench as benchmark
    from .progress import reporter
    from .sources import DEFAULT_MODEL
    from .types import check_precision

    if plot_file:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'aipc[bench]'") from None
    if turns and not cache_slots:
        cache_slots = (1, 0)
    constraint = _constraint(None, bench_schema, None, None)
    combos, notes = benchmark.combinations(backends_, tuple(check_precision(p) for p in precisions), device, variants,
                                           tuple(cache_slots), constraint)
    for note in notes:
        click.echo(note, err=True)
    with reporter(True) as progress:
        report = benchmark.run(model_name or DEFAULT_MODEL, combos, prompt_tokens, new_tokens, runs, warmup,
                               list(options), cold, progress, turns=turns)
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 160).print(benchmark.table(report))
    if json_file:
        json_file.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"report written to {json_file}", err=True)
    if plot_file:
        benchmark.plot(report, plot_file)
        click.echo(f"chart written to {plot_file}", err=True)


# ---------------------------------------------------------------------------------- serve


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option("--model", "-m", "model_names", multiple=True,
              metavar="[NAME=]MODEL[@BACKEND[:PRECISION[:DEVICE]]]",
              help="Model(s) to serve (repeatable). Default: smollm2-135m-instruct. Clients ask for NAME "
                   "(default: MODEL, or a path's last part); @BACKEND:PRECISION:DEVICE overrides the "
                   "server-wide settings for this model, e.g. -m chat=phi-3-mini-4k-instruct@npu "
                   "-m code=phi-3-mini-4k-instruct@directml:int4.")
@model_options
@click.option("--api-key", envvar="AIPC_API_KEY", help="Require `Authorization: Bearer KEY` (env AIPC_API_KEY).")
@click.option("--keep-alive", default=300.0, show_default=True, type=float,
              help="Seconds an idle model stays loaded.")
@click.option("--max-queue", default=8, show_default=True, type=int,
              help="Requests waiting per model before the server answers 429.")
@click.option("--cache-slots", default=4, show_default=True, type=int,
              help="Conversations per model whose prompt state is kept, so a resent history prefills only "
                   "what is new (backends with a prefix cache; least recently used replaced first). 4 suits "
                   "one person's few chats; each slot holds one conversation's KV cache until replaced "
                   "(Phi-3-mini at fp16: about 0.4 MB a token). 0 turns reuse off.")
def serve(**settings) -> None:
    """Serve models over HTTP: OpenAI's API (/v1/chat/completions, /v1/completions, /v1/responses,
    /v1/models), Ollama's (/api/chat, /api/generate, /api/tags, /api/show, /api/ps, ...) and /health.
    Needs `pip install ./core[serve]`."""
    try:
        from .server import serve as run_server
    except ImportError as error:
        raise click.ClickException(f"aipc serve needs its extra: pip install 'aipc[serve]' ({error})") from None
    run_server(**settings)


# ---------------------------------------------------------------------------------- conformance


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--backend", "-b", "backends_", multiple=True, help="Backend(s) to check (default: every installed one).")
@click.option("--json", "json_file", type=click.Path(path_type=Path), help="Write a JSON report here.")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def conformance(backends_, json_file, pytest_args) -> None:
    """Run the conformance suite (pytest) against backends; extra arguments go to pytest.

    The summary ends with a verdict per backend: certified only for a full, unfiltered run
    without failures (``-m``, ``-k`` or a failure make it "not certified", with the reason)."""
    import pytest

    # `aipc` itself is imported already (this CLI), so pytest cannot rewrite it for the suite's
    # plugin and would warn on every run; the suite's own test modules are still rewritten
    args = ["--pyargs", "aipc.conformance", "-p", "no:cacheprovider", "-q", "-rs",
            "-W", "ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning"]
    for name in backends_:
        args += ["--backend", name]
    if json_file:
        args += ["--aipc-report", str(json_file)]
    sys.exit(pytest.main(args + list(pytest_args)))


def main() -> None:
    import warnings

    warnings.formatwarning = lambda message, *args, **kwargs: f"aipc: warning: {message}\n"  # one line, no source
    reg = _registry()
    for backend in reg.working():
        try:
            reg.call(backend.name, "aipc_register_commands", cli=cli)
        except Exception as error:  # a plugin's commands must not break the CLI
            backend.error = f"register_commands failed: {error}"
    try:
        try:
            cli(prog_name="aipc")
        finally:
            sys.stdout.flush()  # output still buffered: a closed pipe shows here
    except BrokenPipeError:  # the reader went away (`aipc backends | head -n 1`): quiet exit 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's docs advise
        sys.exit(1)


if __name__ == "__main__":
    main()
