"""Text-stream helpers shared by the core and backends: stop strings, incremental decoding, and
streaming from a runtime whose generate call blocks and reports tokens through a callback."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .types import Chunk


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
    """Token ids -> text pieces, for runtimes that give ids only.

    Decodes a short window of the newest ids and returns what its text gained since the last
    piece: one decode per token. The window starts a few tokens before the newest ones, so
    tokenizers that strip a leading space or merge bytes stay right; every ``window`` tokens it
    moves up (one decode more). A piece ending in an incomplete UTF-8 sequence (U+FFFD) waits
    for the next token; ``flush`` releases it at the end.
    """

    def __init__(self, decode: Callable[[list[int]], str], window: int = 16, context: int = 3) -> None:
        self.decode = decode
        self.window, self.context = window, context
        self.ids: list[int] = []
        self.start = 0  # window start
        self.read = 0  # ids already turned into text
        self.shown = ""  # the text of ids[start:read], already returned

    def add(self, ids: Sequence[int]) -> str:
        self.ids.extend(int(i) for i in ids)
        text = self.decode(self.ids[self.start :])
        if len(text) <= len(self.shown) or text.endswith("\ufffd"):
            return ""
        piece, self.shown, self.read = text[len(self.shown) :], text, len(self.ids)
        if self.read - self.start > self.window:
            self.start = self.read - self.context
            self.shown = self.decode(self.ids[self.start : self.read])
        return piece

    def flush(self) -> str:
        if self.read >= len(self.ids):
            return ""
        text = self.decode(self.ids[self.start :])
        self.read = len(self.ids)
        return text[len(self.shown) :] if len(text) > len(self.shown) else ""


def hf_decoder(folder: Path) -> Callable[[list[int]], str] | None:
    """Ids -> text with the folder's ``tokenizer.json`` (the ``tokenizers`` library, as the
    reference backend decodes with ``skip_special_tokens=True`` and the folder's
    ``clean_up_tokenization_spaces``), or None where there is none. Microseconds a call: cheaper
    than a runtime's own detokenizer for streaming, and the reference's text for the same ids."""
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    except Exception:  # no tokenizer.json, or a format the tokenizers library cannot read
        return None
    try:
        settings = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = {}
    cleanup = bool(settings.get("clean_up_tokenization_spaces", False))

    def decode(ids: list[int]) -> str:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if cleanup:
            for old, new in _CLEANUPS:
                text = text.replace(old, new)
        return text

    return decode


#: transformers' ``clean_up_tokenization`` replacements
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def threaded_stream(
    run: Callable[[Callable[[Sequence[int]], bool]], None],
    decode: Callable[[list[int]], str],
    translate_error: Callable[[BaseException], BaseException] | None = None,
) -> Iterator[Chunk]:
    """Stream a blocking generate call that reports tokens through a callback.

    ``run(emit)`` runs in a worker thread and calls ``emit(ids)`` for each new token id (or
    ids); ``emit`` returns False once the consumer has gone (the iterator was closed: a stop
    string, Ctrl-C, a client disconnect), and the runtime must then cancel its generation.
    Chunks carry the text, the token count and the ids; text held back for an incomplete
    character is released with the next token or at the end. An exception in ``run`` is
    raised in the consumer, through ``translate_error`` if given.
    """
    tokens: queue.SimpleQueue = queue.SimpleQueue()  # C-implemented: the cheapest handoff per token
    cancelled = threading.Event()
    failure: list[BaseException] = []
    done = object()

    def emit(ids: Sequence[int]) -> bool:
        tokens.put([int(i) for i in ids])
        return not cancelled.is_set()

    def work() -> None:
        try:
            run(emit)
        except BaseException as error:  # handed to the consumer below
            failure.append(error)
        finally:
            tokens.put(done)

    thread = threading.Thread(target=work, name="aipc-generate", daemon=True)
    thread.start()
    decoder = IncrementalDecoder(decode)
    pending: list[int] = []
    try:
        while (ids := tokens.get()) is not done:
            pending.extend(ids)
            piece = decoder.add(ids)
            if piece:
                yield Chunk(piece, tokens=len(pending), ids=tuple(pending))
                pending = []
        rest = decoder.flush()
        if rest or pending:
            yield Chunk(rest, tokens=len(pending), ids=tuple(pending))
        if failure:
            raise translate_error(failure[0]) if translate_error else failure[0]
    finally:
        cancelled.set()
        thread.join()
