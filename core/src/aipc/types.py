"""Plain typed data passed between the core and the backends: the whole plugin contract's data.

What a backend describes itself with (:class:`BackendInfo`, :class:`Device`, :class:`Capabilities`),
what its hooks receive (:class:`QuantizeRequest`, :class:`LoadRequest`, :class:`GenerationConfig`)
and return (:class:`Manifest`, :class:`LoadedModel`, :class:`Chunk`). This module, :mod:`aipc.errors`,
:mod:`aipc.constraints`, :mod:`aipc.hookspecs` and :mod:`aipc.plugins` import nothing above them
(no :mod:`aipc.runtime`), so a plugin can import the contract alone. ``aipc.runtime.LoadRequest`` and
its siblings stay importable from :mod:`aipc.runtime` as well.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .constraints import Constraint
from .errors import InvalidConfigError, InvalidModelError
from .options import check_options as _check_options
from .options import option_bool, option_int  # noqa: F401 - their home before aipc.options

#: Precisions a backend may offer, from widest to narrowest.
PRECISIONS = ("fp32", "fp16", "int8", "int4")

MANIFEST_NAME = "aipc.json"
MANIFEST_FORMAT = 1


def check_precision(precision: str) -> str:
    """Return the precision normalised, or raise InvalidConfigError naming the valid ones."""
    value = (precision or "").strip().lower()
    aliases = {"float32": "fp32", "float16": "fp16", "half": "fp16"}
    value = aliases.get(value, value)
    if value not in PRECISIONS:
        raise InvalidConfigError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}"
        )
    return value


@dataclass(frozen=True)
class Device:
    """A device a backend can target, and whether it is present on this machine."""

    name: str
    precisions: tuple[str, ...]
    present: bool = True
    reason: str = ""  # why the device is absent; empty when present
    accelerator: bool = False  # True for GPU/NPU; CPU stand-ins are False


@dataclass(frozen=True)
class Capabilities:
    """What a backend's generate hook does natively. The core supplies what is missing,
    and the conformance suite checks every claim and skips what is not claimed."""

    streaming: bool = True  # yields tokens as they are produced
    native_stop_strings: bool = False  # stops by itself at config.stop
    sampling: bool = True  # honours temperature / top_p / top_k
    seed_determinism: bool = True  # same seed + sampling -> same tokens
    repetition_penalty: bool = False
    max_context: int | None = None  # tokens, prompt + output; None = the model's own
    max_prompt_tokens: int | None = None  # a device limit below max_context (e.g. NPU)
    max_batch_size: int = 1
    beam_search: bool = False
    exact_precisions: tuple[str, ...] = ("fp32", "fp16")  # greedy tokens equal the reference
    # kinds of aipc.constraints.Constraint the backend's generate honours ("json_schema", "regex", "grammar")
    constraints: tuple[str, ...] = ()
    # keeps the KV state of processed prompts (LoadRequest.cache_slots of them) and prefills only
    # what a new prompt adds to one; reports the reuse in LoadedModel.cached_tokens (aipc.prefix)
    prefix_cache: bool = False
    # generate itself refuses what it cannot do when called directly: settings not claimed here
    # (InvalidConfigError) and prompts over its limit (PromptTooLongError). The core checks both
    # before it calls a backend anyway; claim it and the suite calls the hooks directly to check
    validates_inputs: bool = False
    # re-encodes the whole sequence with the long factors when a generation crosses a LongRoPE
    # model's original context (as the reference and the model's own code do); the suite then
    # compares the tokens after the crossing too, else only those before it
    longrope_reencode: bool = False


@dataclass(frozen=True)
class BackendInfo:
    """A backend's description of itself; cheap to build (no runtime import).

    ``priority`` orders backends when the user names none (``aipc run`` without ``--backend``).
    The default is the working backend with a present accelerator device (``Device.accelerator``:
    NPU, GPU) and the highest priority; only when no backend has one does a CPU backend become the
    default, and then aipc's own backends (the reference ``transformers`` and the project's plugins)
    come before third-party ones, by priority: a third-party plugin's priority makes it the default
    through its accelerators, never silently over the built-ins on the CPU. aipc's own priorities:
    npu 40, directml 30, openvino 20, transformers 0; the example backend uses -10.

    ``options``: the ``-o KEY=VALUE`` names the backend accepts, each with one line of help (shown
    by ``aipc backends``). The core refuses any other name before the backend is reached, unless it
    fully matches ``option_pattern`` (a regular expression, e.g. ``[^a-z]*[A-Z][^a-z]*`` for
    UPPERCASE runtime properties passed through unchecked). Left as None (backends written before
    this check), no name is checked and the backend sees every option. Values are the backend's to
    check (:func:`aipc.options.option_int` and friends help).
    """

    name: str
    version: str
    description: str
    devices: tuple[Device, ...]
    default_precision: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    priority: int = 0  # higher wins when the user does not name a backend (see above)
    runtime_versions: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] | None = None  # -o KEY=VALUE the backend accepts: help; None = not declared
    quantize_options: tuple[str, ...] = ()  # the options that change the artifact (cache key)
    artifact_variant: str = ""  # set from the environment (e.g. an engine); part of the cache key
    option_pattern: str = ""  # further option names accepted unchecked (a regular expression, full match)

    def check_options(self, options: dict[str, str]) -> None:
        """Raise InvalidConfigError for an option name this backend does not accept."""
        _check_options(self.name, options, self.options, self.option_pattern)

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if any(p in d.precisions for d in self.devices))

    @property
    def present(self) -> bool:
        return any(d.present for d in self.devices)

    def device(self, name: str) -> Device | None:
        for d in self.devices:
            if d.name.lower() == name.lower():
                return d
        return None

    def default_device(self) -> Device | None:
        """The first present device, accelerators first."""
        present = [d for d in self.devices if d.present]
        present.sort(key=lambda d: not d.accelerator)
        return present[0] if present else None


@dataclass(frozen=True)
class GenerationConfig:
    """Settings of one generation. ``max_new_tokens`` excludes the prompt.

    ``do_sample`` left as None means: sample when temperature > 0, else greedy.

    ``ignore_eos``: the end-of-sequence tokens (every id that ends generation: the model's EOS and
    ``generation_config.json``'s list) cannot be generated — their logits are masked, as
    transformers' ``min_new_tokens`` and llama.cpp's ``ignore_eos`` do — so exactly
    ``max_new_tokens`` tokens come out, each chosen among the others (benchmarks, tests). It does
    not mean "generate EOS and go on past it". Under a ``constraint`` it does not apply: the text
    ends where the constraint's grammar does.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    do_sample: bool | None = None
    seed: int | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # EOS suppressed: exactly max_new_tokens (see above; not under a constraint)
    constraint: Constraint | None = None  # the text must match a JSON schema, regex or grammar

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidConfigError(f"max_new_tokens must be a whole number >= 1, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise InvalidConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise InvalidConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.seed is not None and self.seed < 0:
            raise InvalidConfigError(f"seed must be >= 0, got {self.seed}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise InvalidConfigError("stop strings must not be empty")
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise InvalidConfigError("constraint must be an aipc.constraints.Constraint")
        if self.do_sample and self.temperature == 0:
            object.__setattr__(self, "temperature", 1.0)

    @property
    def sampling(self) -> bool:
        return self.do_sample if self.do_sample is not None else self.temperature > 0

    @classmethod
    def from_options(cls, **values: Any) -> GenerationConfig:
        """Build from keyword values, ignoring those left as None; unknown names are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InvalidConfigError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def with_(self, **changes: Any) -> GenerationConfig:
        return replace(self, **changes)


@dataclass
class Chunk:
    """One piece of streamed output from a backend: text, the number of tokens it covers and,
    where the runtime gives them, their ids (the conformance suite compares ids)."""

    text: str
    tokens: int = 1
    ids: tuple[int, ...] = ()


@dataclass
class Usage:
    """Figures of the last generation, measured by the core around the backend's stream."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV state the backend reused (not prefilled again)
    generated_tokens: int = 0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = ""  # "stop" (EOS or stop string), "length", "cancelled"
    token_times_s: list[float] = field(default_factory=list, repr=False)  # arrival times

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first, per second between the first and the last token's arrival
        (inter-token times: what the runtime delivers, not the stream's teardown after it)."""
        times = self.token_times_s
        if len(times) >= 2 and times[-1] > times[0]:
            return (len(times) - 1) / (times[-1] - times[0])
        decode_time = self.total_s - self.time_to_first_token_s
        if self.generated_tokens < 2 or decode_time <= 0:
            return 0.0
        return (self.generated_tokens - 1) / decode_time

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("token_times_s")
        data["decode_tokens_per_s"] = round(self.decode_tokens_per_s, 2)
        return data


@dataclass
class Manifest:
    """``aipc.json``, written beside every quantized model."""

    backend: str
    precision: str
    device: str
    source: dict[str, str]  # name, kind, path or id, fingerprint
    options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # aipc, backend, runtimes
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    format: int = MANIFEST_FORMAT

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            manifest = cls(**data)
            check_precision(manifest.precision)
        except FileNotFoundError:
            raise InvalidModelError(f"{folder} has no {MANIFEST_NAME}: not an aipc artifact") from None
        except (ValueError, TypeError) as error:
            raise InvalidModelError(f"{path} is corrupt: {str(error).splitlines()[0]}") from None
        if not isinstance(manifest.source, dict) or not manifest.backend:
            raise InvalidModelError(f"{path} is corrupt: missing backend or source")
        return manifest


Progress = Callable[..., None]  #: ``progress(message, fraction=None)``: a line for the user, optional 0..1


def _quiet(message: str, fraction: float | None = None) -> None:
    pass


@dataclass
class QuantizeRequest:
    """What ``aipc_quantize`` receives (see :mod:`aipc.hookspecs`)."""

    backend: str
    source_dir: Path
    output_dir: Path
    precision: str
    device: str
    options: dict[str, str]
    source: dict[str, str]
    cache_dir: Path
    trust_remote_code: bool = False
    progress: Progress = _quiet

    def manifest(self, options: dict[str, Any] | None = None, versions: dict[str, str] | None = None) -> Manifest:
        """The manifest for this request; ``options`` are the settings actually used."""
        return Manifest(
            backend=self.backend,
            precision=self.precision,
            device=self.device,
            source=dict(self.source),
            options=dict(self.options if options is None else options),
            versions={"aipc": __version__, **(versions or {})},
        )


@dataclass
class LoadRequest:
    """What ``aipc_load`` receives (see :mod:`aipc.hookspecs`)."""

    backend: str
    artifact_dir: Path
    manifest: Manifest
    device: str
    options: dict[str, str]
    cache_dir: Path
    trust_remote_code: bool = False
    progress: Progress = _quiet
    #: prompt states to keep for prefix reuse, if the backend claims ``prefix_cache`` (0: none)
    cache_slots: int = 1


@dataclass
class LoadedModel:
    """What ``aipc_load`` returns: the runtime's object(s) and the context length if known.

    ``cached_tokens``: a backend claiming ``prefix_cache`` sets it during each generate call to
    the number of prompt tokens whose state it reused; the core resets it to 0 before each call
    and reports it as ``Usage.cached_tokens``."""

    runtime: Any
    context_length: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cached_tokens: int = 0
