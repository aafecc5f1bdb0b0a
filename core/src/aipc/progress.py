"""Progress for long steps (fetch, conversion, quantize, first compile): a spinner on a terminal,
plain lines on stderr otherwise, nothing when disabled (``--json``)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

Reporter = Callable[..., None]


def quiet(message: str, fraction: float | None = None) -> None:
    """A reporter that shows nothing."""


@contextlib.contextmanager
def reporter(enabled: bool = True) -> Iterator[Reporter]:
    """Yield ``report(message, fraction=None)``; the display ends when the block does."""
    if not enabled:
        yield quiet
        return
    if not sys.stderr.isatty():
        last = [""]

        def plain(message: str, fraction: float | None = None) -> None:
            if message != last[0]:
                last[0] = message
                print(f"aipc: {message}", file=sys.stderr, flush=True)

        yield plain
        return
    from rich.console import Console

    with Console(stderr=True).status("", spinner="dots") as status:

        def spinner(message: str, fraction: float | None = None) -> None:
            status.update(message if fraction is None else f"{message} {fraction:4.0%}")

        yield spinner
