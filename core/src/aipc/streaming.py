"""Text-stream helpers shared by the core and backends: stop strings and incremental decoding."""

from __future__ import annotations

from typing import Callable, Sequence


class StopStrings:
    """Cut a text stream at the first stop string, holding back text that may begin one.

    ``feed`` returns the text that is safe to show and whether a stop string was found; after
    the stream ends, ``flush`` returns what was held back.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(stop[:size]):
                    hold = size
                    break
        cut = len(self.buffer) - hold
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class IncrementalDecoder:
    """Turn a growing list of token ids into text pieces, for runtimes that give ids only.

    Decodes the whole output each time and emits the new suffix; a suffix that ends in an
    incomplete UTF-8 sequence (U+FFFD) is held until the next token completes it.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.emitted = 0

    def add(self, ids: Sequence[int]) -> str:
        self.ids.extend(int(i) for i in ids)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted :], len(text)
        return piece
