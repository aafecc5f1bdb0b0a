"""The one cache folder for everything aipc derives: fetched packages, converted Hugging Face
folders, quantized artifacts and runtimes' compile caches.

Location: ``AIPC_HOME`` or the platform's user cache dir. Every entry is written into a
temporary sibling folder and renamed into place when complete, so an interrupted conversion
or quantize never leaves a folder that a later run takes for complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import CacheError

TMP_PREFIX = ".tmp-"
STALE_AFTER_S = 24 * 3600


def home() -> Path:
    """The cache root (created on demand)."""
    root = os.environ.get("AIPC_HOME")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("aipc", appauthor=False)
    return Path(root).expanduser()


def area(*parts: str) -> Path:
    """A folder inside the cache, e.g. ``area("compile", "openvino")``; created if missing."""
    path = home().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CacheError(f"cannot create cache folder {path}: {error.strerror or error}") from None
    return path


def key(*values: Any) -> str:
    """A short stable hash of JSON-able values, for cache folder names."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path) -> None:
    """Remove temporary folders left by killed runs (their process is gone, or they are old)."""
    if not parent.is_dir():
        return
    for tmp in parent.glob(f"{TMP_PREFIX}*"):
        try:
            pid = int(tmp.name[len(TMP_PREFIX) :].split("-")[0])
        except (IndexError, ValueError):
            pid = -1
        old = time.time() - tmp.stat().st_mtime > STALE_AFTER_S
        if old or not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; rename it to ``final`` on success.

    On an exception (including KeyboardInterrupt) the temporary folder is removed; if the
    process is killed it stays behind under a ``.tmp-`` name that nothing reads and the next
    run removes. An existing ``final`` is replaced only after the new one is complete.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final.parent)
        tmp = final.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}"
        tmp.mkdir()
    except OSError as error:
        raise CacheError(f"cannot write to {final.parent}: {error.strerror or error}") from None
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise CacheError(f"cannot write {final}: {error.strerror}") from None
        raise


def fingerprint(path: Path) -> str:
    """A content fingerprint of a model file or folder: names, sizes, and hashes of small files
    plus the head and tail of large ones (weights are too big to hash on every run)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name == "aipc.json" or any(part.startswith(TMP_PREFIX) for part in file.parts):
            continue
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if file != path else file.name}:{size}\n".encode())
        with open(file, "rb") as handle:
            if size <= 4 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@dataclass
class Entry:
    """A cached model folder as ``aipc models`` lists it."""

    name: str
    kind: str  # "source" or "artifact"
    path: Path
    size: int
    backend: str = ""
    precision: str = ""
    device: str = ""
    source: str = ""


def entries() -> list[Entry]:
    """Every complete entry in the cache (temporary folders are skipped)."""
    from .types import MANIFEST_NAME, Manifest

    found: list[Entry] = []
    root = home()
    sources = root / "sources"
    if sources.is_dir():
        for folder in sorted(sources.iterdir()):
            if folder.is_dir() and not folder.name.startswith(TMP_PREFIX):
                found.append(Entry(folder.name, "source", folder, folder_size(folder)))
    artifacts = root / "artifacts"
    if artifacts.is_dir():
        for folder in sorted(artifacts.glob("*/*")):
            if not folder.is_dir() or folder.name.startswith(TMP_PREFIX):
                continue
            entry = Entry(folder.name, "artifact", folder, folder_size(folder))
            if (folder / MANIFEST_NAME).exists():
                try:
                    manifest = Manifest.read(folder)
                    entry.backend, entry.precision, entry.device = manifest.backend, manifest.precision, manifest.device
                    entry.source = manifest.source.get("name", "")
                except Exception:
                    entry.backend = "(corrupt manifest)"
            found.append(entry)
    return found
