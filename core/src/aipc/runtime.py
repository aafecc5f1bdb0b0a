"""The Python API: quantize a model for a backend, load it, generate with it.

This is where the core routes a call to the chosen backend and supplies what a runtime
lacks: the chat template, stop strings, the token limit, the context check, cancellation
and timing figures.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import artifacts, cache, prefix
from .chat import ChatTemplate, messages_for
from .errors import (
    AipcError,
    BackendError,
    BackendUnavailableError,
    InvalidConfigError,
    InvalidModelError,
    PromptTooLongError,
    UnsupportedDeviceError,
    UnsupportedPrecisionError,
)
from .options import parse_options, thread_count  # noqa: F401 - thread_count: re-exported for plugins
from .plugins import Backend, Registry, registry
from .sources import DEFAULT_MODEL, ResolvedModel, resolve
from .streaming import StopStrings
from .types import (Chunk, Device, GenerationConfig, LoadedModel, LoadRequest, Manifest, Progress, QuantizeRequest,
                    Usage, _quiet, check_precision)


def choose(reg: Registry, backend: str | None, precision: str | None, device: str | None, need_present: bool):
    """Pick the backend, device and precision, checking each against the backend's description;
    returns (backend, device name, precision) or raises the error the user needs to see."""
    chosen: Backend = reg.get(backend) if backend else reg.default()
    info = chosen.info
    if device:
        dev: Device | None = info.device(device)
        if dev is None:
            names = ", ".join(d.name for d in info.devices)
            raise UnsupportedDeviceError(f"backend {info.name!r} has no device {device!r} (it knows: {names})")
    else:
        wanted = check_precision(precision) if precision else None
        offering = [d for d in info.devices if d.present and (wanted is None or wanted in d.precisions)]
        offering.sort(key=lambda d: not d.accelerator)
        dev = offering[0] if offering else info.default_device()
        if dev is None:
            reasons = "; ".join(f"{d.name}: {d.reason}" for d in info.devices)
            raise BackendUnavailableError(f"backend {info.name!r} has no device present here ({reasons})")
    if need_present and not dev.present:
        raise BackendUnavailableError(f"device {dev.name} of backend {info.name!r} is not present: {dev.reason}")
    precision = check_precision(precision or info.default_precision)
    if precision not in dev.precisions:
        raise UnsupportedPrecisionError(
            f"backend {info.name!r} has no {precision} on {dev.name} (it has: {', '.join(dev.precisions)})"
        )
    return chosen, dev.name, precision


def _detector(reg: Registry) -> Callable[[Path], dict[str, str]]:
    def detect(folder: Path) -> dict[str, str]:
        found = {}
        for backend in reg.working():
            precision = reg.call(backend.name, "aipc_detect_artifact", folder=folder)
            precision = next((p for p in precision if p), None) if isinstance(precision, list) else precision
            if precision:
                found[backend.name] = precision
        return found

    return detect


def artifact_path(backend: Backend, model: ResolvedModel, precision: str, device: str, options: dict[str, str]) -> Path:
    """The cache folder for this (source, backend and its version, precision, device, options).

    The key is the source's content fingerprint, not its name: a model named two ways (a catalogue
    name, then the folder it resolved to) finds the artifact the first name made."""
    relevant = {k: v for k, v in options.items() if k in backend.info.quantize_options}
    digest = cache.key(model.fingerprint, relevant, precision, device, backend.info.version,
                       backend.info.artifact_variant)
    folder = cache.home() / "artifacts" / backend.name
    suffix = f"-{precision}-{device.lower()}-{digest}"
    made = sorted(p for p in folder.glob(f"*{suffix}") if not p.name.startswith(cache.TMP_PREFIX)) if folder.is_dir() else []
    if made:  # the name is only a label
        return made[0]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model.name).name).strip("-")[:40] or "model"
    return folder / f"{slug}{suffix}"


def quantize(
    model: str = DEFAULT_MODEL,
    backend: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    options: Sequence[str] | dict[str, Any] | None = None,
    output: Path | None = None,
    trust_remote_code: bool = False,
    progress: Progress = _quiet,
    force: bool = False,
) -> Path:
    """Make (or find in the cache) ``model``'s artifact for a backend; return its folder."""
    reg = registry()
    chosen, device, precision = choose(reg, backend, precision, device, need_present=False)
    options = parse_options(options)
    chosen.info.check_options(options)
    resolved = resolve(model, progress, _detector(reg))
    if resolved.hf_dir is None:
        raise InvalidConfigError(f"{model} is already a quantized artifact; quantize its source model instead")
    return _quantize_resolved(reg, chosen, resolved, precision, device, options, output, trust_remote_code, progress, force)


def _quantize_resolved(reg, chosen, resolved, precision, device, options, output, trust_remote_code, progress, force):
    final = Path(output) if output else artifact_path(chosen, resolved, precision, device, options)
    if final.exists() and not force:
        if output and any(final.iterdir()):
            raise InvalidConfigError(f"output folder {final} exists and is not empty")
        if not output:
            try:
                Manifest.read(final)
                return final
            except InvalidModelError:
                progress(f"Cached artifact {final.name} is corrupt; quantizing again")
    with cache.atomic_dir(final) as tmp:
        request = QuantizeRequest(
            backend=chosen.name, source_dir=resolved.hf_dir, output_dir=tmp, precision=precision, device=device,
            options=options, source=resolved.source_record(), cache_dir=cache.area("compile", chosen.name),
            trust_remote_code=trust_remote_code, progress=progress,
        )
        progress(f"Quantizing {resolved.name} to {precision} for {chosen.name} on {device} (once)")
        manifest = reg.call(chosen.name, "aipc_quantize", request=request)
        if not isinstance(manifest, Manifest):
            raise BackendError(f"backend {chosen.name!r} broke its contract: quantize returned no manifest")
        if (manifest.backend, manifest.precision) != (chosen.name, precision):
            raise BackendError(f"backend {chosen.name!r} wrote a manifest for {manifest.backend}/{manifest.precision}")
        artifacts.copy_side_files(resolved.hf_dir, tmp)  # the tokenizer and chat template the core reads
        manifest.write(tmp)
    return final


def load(
    model: str = DEFAULT_MODEL,
    backend: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    options: Sequence[str] | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    progress: Progress = _quiet,
    cache_slots: int | None = None,
) -> Model:
    """Load ``model`` on a backend, quantizing it into the cache first if needed.

    ``model`` is a catalogue name, a hub id, a Hugging Face folder, a GGUF file or an artifact
    folder. ``backend`` defaults to the best installed backend whose hardware is present,
    ``precision`` to the backend's recommended one, ``device`` to its first present device.
    ``cache_slots``: how many conversations' prompt states a backend with a prefix cache keeps
    (default ``AIPC_CACHE_SLOTS`` or 1; 0 turns reuse off and every prompt is prefilled whole).
    """
    slots = prefix.cache_slots(cache_slots)
    reg = registry()
    options = parse_options(options)
    resolved = resolve(model, progress, _detector(reg))
    if resolved.artifact_dir is not None:
        manifest = resolved.manifest or _inferred_manifest(resolved, backend)
        if backend and backend != manifest.backend:
            raise InvalidConfigError(f"{model} is an artifact of backend {manifest.backend!r}, not {backend!r}")
        if precision and check_precision(precision) != manifest.precision:
            raise InvalidConfigError(f"{model} holds {manifest.precision}, not {precision}")
        chosen, device, precision = choose(reg, manifest.backend, manifest.precision, device or manifest.device, True)
        chosen.info.check_options(options)
        artifact = resolved.artifact_dir
    else:
        chosen, device, precision = choose(reg, backend, precision, device, need_present=True)
        chosen.info.check_options(options)
        artifact = _quantize_resolved(reg, chosen, resolved, precision, device, options, None, trust_remote_code, progress, False)
        manifest = Manifest.read(artifact)
    progress(f"Loading {resolved.name} ({precision}) on {chosen.name}/{device}")
    request = LoadRequest(
        backend=chosen.name, artifact_dir=artifact, manifest=manifest, device=device, options=options,
        cache_dir=cache.area("compile", chosen.name), trust_remote_code=trust_remote_code, progress=progress,
        cache_slots=slots,
    )
    started = time.perf_counter()
    loaded = reg.call(chosen.name, "aipc_load", request=request)
    if not isinstance(loaded, LoadedModel):
        raise BackendError(f"backend {chosen.name!r} broke its contract: load returned {type(loaded).__name__}")
    return Model(reg, chosen, loaded, resolved.name, artifact, manifest, device, time.perf_counter() - started)


def _inferred_manifest(resolved: ResolvedModel, backend: str | None) -> Manifest:
    found = resolved.foreign_backends
    name = backend if backend in found else next(iter(found))
    return Manifest(backend=name, precision=found[name], device="", source={"name": resolved.name, "kind": "foreign"})


class Model:
    """A loaded model. ``generate`` and ``chat`` stream text; ``usage`` describes the last call."""

    def __init__(self, reg, backend, loaded, name, artifact_dir, manifest, device, load_s) -> None:
        self._registry = reg
        self._backend = backend
        self.loaded = loaded
        self.name = name
        self.artifact_dir = Path(artifact_dir)
        self.manifest = manifest
        self.device = device
        self.load_s = load_s
        self.usage = Usage()
        self.template = ChatTemplate.from_folder(self.artifact_dir)

    backend = property(lambda self: self._backend.name)
    precision = property(lambda self: self.manifest.precision)
    capabilities = property(lambda self: self._backend.info.capabilities)

    @property
    def context_length(self) -> int | None:
        limits = [n for n in (self.loaded.context_length, self.capabilities.max_context) if n]
        return min(limits) if limits else None

    def _call(self, hook: str, **kwargs: Any) -> Any:
        return self._registry.call(self.backend, hook, model=self.loaded, **kwargs)

    def tokenize(self, text: str) -> list[int]:
        return list(self._call("aipc_tokenize", text=text))

    def format_prompt(self, prompt: str, system: str | None = None) -> str:
        """The prompt as the model expects it: the chat template applied to one user turn."""
        if not prompt or not prompt.strip():
            raise InvalidConfigError("the prompt is empty")
        return self.format_chat(messages_for(prompt, system))

    def format_chat(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The conversation as prompt text; ``tools`` (OpenAI's tool objects) go to a template that
        takes them (``aipc.tools`` renders tools for the others)."""
        if not messages:
            raise InvalidConfigError("the conversation is empty")
        if self.template is None:  # never messages joined by newlines: the model would answer nonsense
            raise InvalidModelError(
                f"{self.artifact_dir} has no chat template (chat_template.jinja, chat_template.json or "
                "tokenizer_config.json's chat_template), so chat messages cannot be formatted; send the "
                "prompt as raw text (generate(..., raw=True)) or use a model folder that has one"
            )
        return self.template.render(messages, tools=tools)

    def generate(self, prompt: str, *, system: str | None = None, raw: bool = False, **settings: Any) -> Iterator[str]:
        """Stream the answer to ``prompt`` (chat-templated unless ``raw``). Settings are
        :class:`aipc.types.GenerationConfig` fields."""
        if raw and not prompt:
            raise InvalidConfigError("the prompt is empty")
        text = prompt if raw else self.format_prompt(prompt, system)
        return self._stream(text, GenerationConfig.from_options(**settings))

    def chat(self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None,
             **settings: Any) -> Iterator[str]:
        """Stream the assistant's next message after ``messages`` (role/content dicts)."""
        return self._stream(self.format_chat(messages, tools=tools), GenerationConfig.from_options(**settings))

    def complete(self, prompt: str, **kwargs: Any) -> str:
        """The whole answer at once."""
        return "".join(self.generate(prompt, **kwargs))

    def _stream(self, text: str, config: GenerationConfig) -> Iterator[str]:
        caps = self.capabilities
        if config.repetition_penalty != 1.0 and not caps.repetition_penalty:
            raise InvalidConfigError(f"backend {self.backend!r} does not support repetition_penalty")
        if config.sampling and not caps.sampling:
            raise InvalidConfigError(f"backend {self.backend!r} does not sample; leave temperature at 0")
        if config.seed is not None and config.sampling and not caps.seed_determinism:
            warnings.warn(f"backend {self.backend!r} does not claim seed determinism: seed {config.seed} may not "
                          "repeat the answer", stacklevel=3)
        if config.constraint is not None and config.constraint.kind not in caps.constraints:
            can = f"it can: {', '.join(caps.constraints)}" if caps.constraints else "it constrains no output"
            raise InvalidConfigError(f"backend {self.backend!r} cannot constrain output to a {config.constraint.kind} ({can})")
        prompt_tokens = len(self.tokenize(text))
        if caps.max_prompt_tokens and prompt_tokens > caps.max_prompt_tokens:
            raise PromptTooLongError(
                f"the prompt has {prompt_tokens} tokens; {self.backend} on {self.device} takes at most {caps.max_prompt_tokens}"
            )
        limit = self.context_length
        if limit and prompt_tokens >= limit:
            raise PromptTooLongError(f"the prompt has {prompt_tokens} tokens; the model's context is {limit}")
        if limit and prompt_tokens + config.max_new_tokens > limit:
            config = config.with_(max_new_tokens=limit - prompt_tokens)
        return self._run(text, config, prompt_tokens)

    def raw_stream(self, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
        """The backend's own stream for final prompt text, without the core's stop strings, limits
        or checks: what the conformance suite and benchmarks examine."""
        return self._call("aipc_generate", prompt=prompt, config=config)

    def _run(self, text: str, config: GenerationConfig, prompt_tokens: int) -> Iterator[str]:
        usage = self.usage = Usage(prompt_tokens=prompt_tokens, finish_reason="cancelled")
        stops = StopStrings(config.stop)
        started = time.perf_counter()
        self.loaded.cached_tokens = 0
        stream = self.raw_stream(text, config)
        hit = False
        if stream is None:
            raise BackendError(f"backend {self.backend!r} broke its contract: generate returned nothing")
        try:
            for chunk in stream:
                if not isinstance(chunk, Chunk):
                    raise BackendError(f"backend {self.backend!r} broke its contract: generate yielded {type(chunk).__name__}")
                now = time.perf_counter() - started
                if not usage.token_times_s:
                    usage.time_to_first_token_s = now
                usage.token_times_s.extend([now] * max(chunk.tokens, 0))
                usage.generated_tokens += chunk.tokens
                piece, hit = stops.feed(chunk.text)
                if piece:
                    yield piece
                if hit:
                    usage.finish_reason = "stop"
                    break
                if usage.generated_tokens >= config.max_new_tokens:
                    usage.finish_reason = "length"
                    break
            else:
                usage.finish_reason = "length" if usage.generated_tokens >= config.max_new_tokens else "stop"
            if not hit:
                rest = stops.flush()
                if rest:
                    yield rest
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()
            usage.total_s = time.perf_counter() - started
            usage.cached_tokens = max(0, min(int(self.loaded.cached_tokens or 0), prompt_tokens))

    def close(self) -> None:
        """Release the runtime (the backend's objects, and what it keeps in ``extra``, are dropped)."""
        self.loaded.runtime = None
        self.loaded.extra = {}

    def __repr__(self) -> str:
        return f"<aipc.Model {self.name} {self.backend}/{self.device}/{self.precision}>"


__all__ = ["AipcError", "LoadRequest", "LoadedModel", "Model", "QuantizeRequest", "load", "quantize", "parse_options",
           "thread_count"]
