"""Plain typed data passed between the core and the backends."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .constraints import Constraint
from .errors import InvalidConfigError, InvalidModelError

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


def option_bool(name: str, value: str) -> bool:
    """A backend's ``-o name=value`` as a boolean (1/0, true/false, yes/no, on/off)."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidConfigError(f"option {name} must be true or false, got {value!r}")


def option_int(name: str, value: str, minimum: int | None = None) -> int:
    """A backend's ``-o name=value`` as a whole number, at least ``minimum`` if given."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InvalidConfigError(f"option {name} must be a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise InvalidConfigError(f"option {name} must be >= {minimum}, got {number}")
    return number


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


@dataclass(frozen=True)
class BackendInfo:
    """A backend's description of itself; cheap to build (no runtime import)."""

    name: str
    version: str
    description: str
    devices: tuple[Device, ...]
    default_precision: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    priority: int = 0  # higher wins when the user does not name a backend
    runtime_versions: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # -o KEY=VALUE the backend accepts: help
    quantize_options: tuple[str, ...] = ()  # the options that change the artifact (cache key)
    artifact_variant: str = ""  # set from the environment (e.g. an engine); part of the cache key

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
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    do_sample: bool | None = None
    seed: int | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks force exactly max_new_tokens (not under a constraint: it ends with its grammar)
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
