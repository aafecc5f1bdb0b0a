"""Backend options (``-o KEY=VALUE``): parsing, checking names against what a backend declares,
and reading values.

A backend declares the options it accepts in ``BackendInfo.options`` (name -> one-line help) and,
for names it passes to its runtime unchecked (e.g. OpenVINO's UPPERCASE properties), a regular
expression in ``BackendInfo.option_pattern``. The core checks every option against that
declaration before the backend is reached (:func:`check_options`), so an unknown or misspelt
option is one clear error, the same for every backend. A backend that declares no options
(``options`` left as None, as backends written before this check did) gets every option unchecked.

Plugins read values with :func:`option_bool`, :func:`option_int` and :func:`thread_count`.
This module imports nothing but :mod:`aipc.errors`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

from .errors import InvalidConfigError


#: ``BackendInfo.option_pattern`` for names in capitals (a runtime's own properties, e.g. OpenVINO's
#: ``KV_CACHE_PRECISION``), which str.isupper() accepts.
UPPERCASE = r"[^a-z]*[A-Z][^a-z]*"


def parse_options(pairs: Sequence[str] | Mapping[str, Any] | None) -> dict[str, str]:
    """``["k=v", ...]`` (the CLI's ``-o``) or a dict, as a dict of strings."""
    if not pairs:
        return {}
    if isinstance(pairs, Mapping):
        return {str(k): str(v) for k, v in pairs.items()}
    options = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidConfigError(f"option {pair!r} is not KEY=VALUE")
        options[name.strip()] = value.strip()
    return options


def check_options(backend: str, options: Mapping[str, str], declared: Mapping[str, str] | None,
                  pattern: str = "") -> None:
    """Raise InvalidConfigError naming the first unknown option and listing the accepted ones.

    ``declared`` is ``BackendInfo.options`` (None: the backend declares nothing, so nothing is
    checked); ``pattern`` is ``BackendInfo.option_pattern``, a regular expression that further
    names must match in full.
    """
    if declared is None:
        return
    unknown = [name for name in options if name not in declared and not (pattern and re.fullmatch(pattern, name))]
    if unknown:
        accepted = ", ".join(declared) or "none"
        raise InvalidConfigError(
            f"backend {backend!r} has no option {', '.join(sorted(unknown))} (it accepts: {accepted}; "
            f"see `aipc backends`)"
        )


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


def thread_count(options: Mapping[str, str]) -> int | None:
    """Threads from ``-o threads=N`` or ``AIPC_NUM_THREADS``; None leaves the runtime's default."""
    value = options.get("threads") or os.environ.get("AIPC_NUM_THREADS")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise InvalidConfigError(f"threads must be a whole number >= 1, got {value!r}")
    return int(value)
