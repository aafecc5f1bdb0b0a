from hypothesis import given
from hypothesis import strategies as st

from aipc.streaming import IncrementalDecoder, StopStrings


def feed_all(pieces, stops):
    cut, out = StopStrings(stops), []
    for piece in pieces:
        text, hit = cut.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + cut.flush(), False


def test_stop_string_split_across_chunks():
    assert feed_all(["Hello <|e", "nd|> more"], ["<|end|>"]) == ("Hello ", True)
    assert feed_all(["abc", "de"], ["x"]) == ("abcde", False)
    assert feed_all(["a<", "b"], ["<|end|>"]) == ("a<b", False)


def test_held_text_is_released_when_the_stop_string_does_not_come():
    cut = StopStrings(["STOP"])
    assert cut.feed("go ST") == ("go ", False)
    assert cut.feed("ART") == ("START", False)


@given(st.text(alphabet="abST OP", max_size=40), st.lists(st.integers(1, 6), max_size=12),
       st.lists(st.sampled_from(["STOP", "ab", "O", "TS"]), max_size=2))
def test_output_is_the_text_before_the_first_stop(text, cuts, stops):
    pieces, rest = [], text
    for size in cuts:
        pieces.append(rest[:size])
        rest = rest[size:]
    pieces.append(rest)
    positions = [text.find(s) for s in stops if s in text]
    want = text[: min(positions)] if positions else text
    assert feed_all(pieces, stops) == (want, bool(positions))


def test_incremental_decoder_holds_incomplete_utf8():
    data = "é!".encode()

    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    decoder = IncrementalDecoder(decode)
    assert decoder.add([data[0]]) == ""
    assert decoder.add([data[1]]) == "é"
    assert decoder.add([data[2]]) == "!"


def _bytes_decoder(calls):
    def decode(ids):
        calls.append(len(ids))
        return bytes(ids).decode("utf-8", errors="replace")

    return decode


@given(st.text(max_size=120))
def test_incremental_decoder_pieces_add_up_to_the_text_with_one_decode_per_token(text):
    calls: list[int] = []
    decoder = IncrementalDecoder(_bytes_decoder(calls), window=8, context=2)
    data = text.encode()
    pieces = [decoder.add([byte]) for byte in data]
    assert "".join(pieces) + decoder.flush() == text
    # one decode per token, one more each time the window moves up (every window - context tokens)
    assert len(calls) <= len(data) + len(data) // 6 + 1
    assert max(calls, default=0) <= 8 + 4  # the window stays short (a held-back character at most adds to it)


def test_hf_decoder_matches_the_reference_tokenizer(smollm2, tmp_path):
    from transformers import AutoTokenizer

    from aipc.streaming import hf_decoder

    assert hf_decoder(tmp_path) is None  # no tokenizer.json: the caller falls back to its runtime's decoder
    decode = hf_decoder(smollm2)
    reference = AutoTokenizer.from_pretrained(str(smollm2))
    ids = reference("Hello, world! It's 2 + 2 = 4 ... isn't it?<|im_end|> Ünïcödé")["input_ids"]
    assert decode(ids) == reference.decode(ids, skip_special_tokens=True)
    stream = IncrementalDecoder(decode)
    assert "".join(stream.add([i]) for i in ids) + stream.flush() == reference.decode(ids, skip_special_tokens=True)
