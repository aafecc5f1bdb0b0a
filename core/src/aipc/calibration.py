"""Calibration text for data-aware weight compression (AWQ, scale estimation, GPTQ), with no hub.

Backends take ``-o dataset=SPEC``; :func:`resolve` turns it into text:

- ``self`` (what data-aware recipes default to): the source model's own answers to
  :data:`PROMPTS` (seeded sampling, chat-templated the way aipc sends prompts), generated once
  with transformers and cached in aipc's cache under the source's fingerprint and the settings.
  Nothing is downloaded, and the text is in the model's own distribution and chat format.
- a path to a text file: samples separated by blank lines, or a ``.jsonl`` file with a ``"text"``
  field per line.
- any other name (``wikitext2``, ``c4``): a public dataset, left to the runtime's own loader,
  which needs the Hugging Face hub.

What was used goes into the artifact's manifest (:attr:`Calibration.record`). Imports torch and
transformers only when it generates.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cache
from .errors import InvalidConfigError
from .types import Progress, _quiet

SELF = "self"
DEFAULT_SAMPLES = 32
DEFAULT_SEED = 0
NEW_TOKENS = 96
_FORMAT = 1  # bump when generation changes, so cached text is made again

#: Diverse requests for self-generated calibration text: facts, explanations, instructions,
#: reasoning, code, writing, conversation. Not the questions of benchmarks/questions/.
PROMPTS = (
    "Explain how a rainbow forms.",
    "Write a short poem about autumn leaves.",
    "Summarize the plot of a classic fairy tale in three sentences.",
    "What are the main causes of the seasons on Earth?",
    "Give me three tips for learning a new language.",
    "Write a Python function that reverses a string.",
    "Describe the water cycle step by step.",
    "What is the difference between weather and climate?",
    "Write a polite email asking a colleague for a meeting next week.",
    "Explain what photosynthesis is to a ten-year-old.",
    "List five healthy breakfast ideas.",
    "If a train travels 60 kilometres in one hour, how far does it go in three hours?",
    "What is the role of the heart in the human body?",
    "Tell me about the history of the printing press.",
    "Write a haiku about a mountain lake.",
    "How do vaccines help the immune system?",
    "Translate 'good morning, how are you?' into Spanish and French.",
    "What are prime numbers? Give some examples.",
    "Describe a busy market in a few sentences.",
    "Why do we need sleep?",
    "Explain the rules of chess briefly.",
    "Write a SQL query that counts the rows of a table named orders.",
    "What should I pack for a weekend camping trip?",
    "Compare cats and dogs as pets.",
    "How does a bicycle stay upright while moving?",
    "Write the opening paragraph of a mystery story.",
    "What is gravity?",
    "Give me a simple recipe for pancakes.",
    "Explain what an algorithm is with an everyday example.",
    "What are the planets of the solar system, in order from the Sun?",
    "How can I save money on groceries?",
    "Describe the life cycle of a frog.",
    "Write a JavaScript function that adds two numbers.",
    "Why is the ocean salty?",
    "What is the difference between a virus and a bacterium?",
    "Suggest a name for a small bakery and explain why.",
    "How do airplanes fly?",
    "Write a thank-you note to a teacher.",
    "What were the main achievements of ancient Rome?",
    "Solve: what is 15% of 80?",
    "Explain how to plant a tree.",
    "What is machine learning?",
    "Describe the taste of a lemon to someone who has never had one.",
    "What are good habits for staying healthy?",
    "Why do leaves change color in the fall?",
    "Write a limerick about a cat.",
    "How does the internet work, in simple terms?",
    "What is the capital city of Kenya, and what is it known for?",
)


@dataclass
class Calibration:
    """Resolved calibration data: ``texts`` (None for a hub dataset the runtime loads by
    ``name``) and what the manifest records."""

    name: str
    texts: list[str] | None
    record: dict[str, Any] = field(default_factory=dict)


def resolve(spec: str, source_dir: Path, samples: int | None = None, seed: int = DEFAULT_SEED, *,
            trust_remote_code: bool = False, progress: Progress = _quiet) -> Calibration:
    """The calibration text ``-o dataset=SPEC`` names, for the model in ``source_dir``."""
    spec = (spec or "").strip()
    if not spec:
        raise InvalidConfigError("dataset is empty: use self, a text file, or a dataset name such as wikitext2")
    if spec == SELF:
        count = samples or DEFAULT_SAMPLES
        texts = self_generated(Path(source_dir), count, seed, trust_remote_code=trust_remote_code, progress=progress)
        return Calibration(SELF, texts, _record(SELF, texts, seed=seed, new_tokens=NEW_TOKENS))
    path = Path(spec).expanduser()
    if path.exists() or os.sep in spec or spec.endswith((".txt", ".jsonl")):
        texts = read_file(path)
        if samples:
            texts = texts[:samples]
        return Calibration(str(path), texts, _record(path.name, texts))
    return Calibration(spec, None, {"dataset": spec, **({"samples": samples} if samples else {})})


def _record(name: str, texts: list[str], **more: Any) -> dict[str, Any]:
    digest = hashlib.sha256("\n\0".join(texts).encode()).hexdigest()[:16]
    return {"dataset": name, "samples": len(texts), "sha256": digest, **more}


def read_file(path: Path) -> list[str]:
    """Samples from a text file (blank-line separated) or a JSON-lines file (``"text"`` fields)."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidConfigError(f"cannot read calibration file {path}: {getattr(error, 'strerror', None) or error}") from None
    if Path(path).suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (ValueError, KeyError, TypeError):
                raise InvalidConfigError(f"{path}:{number}: each line must be a JSON object with a \"text\" field") from None
    else:
        texts = [block.strip() for block in raw.split("\n\n")]
    texts = [t for t in texts if t]
    if not texts:
        raise InvalidConfigError(f"calibration file {path} holds no text")
    return texts


def self_generated(source_dir: Path, samples: int, seed: int = DEFAULT_SEED, *, trust_remote_code: bool = False,
                   progress: Progress = _quiet) -> list[str]:
    """``samples`` texts: the model's own seeded answers to :data:`PROMPTS`, each with its
    chat-templated prompt; cached, so a model's calibration text is generated once."""
    target = cache.area("calibration") / f"{cache.key(cache.fingerprint(source_dir), samples, seed, NEW_TOKENS, _FORMAT)}.json"
    if target.is_file():
        try:
            return json.loads(target.read_text(encoding="utf-8"))["texts"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable: made again
    texts = _generate(source_dir, samples, seed, trust_remote_code, progress)
    tmp = target.with_name(f"{cache.TMP_PREFIX}{os.getpid()}-{target.name}")
    tmp.write_text(json.dumps({"source": str(source_dir), "seed": seed, "texts": texts}), encoding="utf-8")
    tmp.replace(target)
    return texts


def _generate(source_dir: Path, samples: int, seed: int, trust_remote_code: bool, progress: Progress) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .options import thread_count

    threads = thread_count({})
    if threads:
        torch.set_num_threads(threads)
    progress(f"Generating {samples} calibration samples with the source model (once; cached)", 0.0)
    tokenizer = AutoTokenizer.from_pretrained(str(source_dir), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(source_dir), torch_dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [_templated(tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(samples)]
    torch.manual_seed(seed)
    texts: list[str] = []
    batch = 16
    for start in range(0, samples, batch):
        chunk = prompts[start:start + batch]
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**encoded, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=NEW_TOKENS,
                                 pad_token_id=tokenizer.pad_token_id)
        for prompt, row in zip(chunk, out[:, encoded["input_ids"].shape[1]:].tolist()):
            ends = [i for i, t in enumerate(row) if t == tokenizer.eos_token_id]
            texts.append(prompt + tokenizer.decode(row[:ends[0] + 1] if ends else row, skip_special_tokens=False))
        progress(f"Calibration samples {len(texts)}/{samples}", len(texts) / samples)
    return texts


def _templated(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"
