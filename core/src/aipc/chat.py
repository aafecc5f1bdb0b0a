"""Chat templates, applied once by the core for every backend.

The template comes from the model folder (``chat_template.jinja``, ``chat_template.json`` or
``tokenizer_config.json``), as transformers stores it; Phi-3 models without one get Phi-3's.
Rendering uses jinja2 the way transformers does, so no backend imports transformers for it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from .errors import InvalidConfigError

PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

DEFAULT_SYSTEM = "You are a helpful AI assistant."


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer configs
        return value.get("content", "")
    return value or ""


class ChatTemplate:
    """A model's chat template and the special tokens it refers to."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTemplate | None:
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        elif (folder / "chat_template.json").exists():
            template = _read_json(folder / "chat_template.json").get("chat_template", template)
        if not template and _read_json(folder / "config.json").get("model_type") == "phi3":
            template = PHI3_TEMPLATE
        if not template:
            return None
        return cls(template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))

    @property
    def supports_tools(self) -> bool:
        """Whether the template reads a ``tools`` variable (transformers' ``tools=`` argument)."""
        return _uses_tools(self.source)

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The prompt text. ``tools`` (OpenAI's tool objects) is passed as the template's ``tools``
        variable, as transformers does; an assistant message with ``tool_calls`` may have no content."""
        for message in messages:
            if not isinstance(message, dict) or "role" not in message or (
                    "content" not in message and not message.get("tool_calls")):
                raise InvalidConfigError("each chat message needs a 'role' and a 'content'")
        extra = {"tools": list(tools)} if tools else {}
        return _compile(self.source).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **extra,
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _raise(message: str) -> None:
    raise InvalidConfigError(f"chat template: {message}")


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    return env.from_string(source)


@lru_cache(maxsize=8)
def _uses_tools(source: str) -> bool:
    from jinja2 import meta

    try:
        return "tools" in meta.find_undeclared_variables(_compile(source).environment.parse(source))
    except Exception:  # a template jinja2 cannot parse fails later, where it is rendered
        return False


def messages_for(prompt: str, system: str | None) -> list[dict[str, str]]:
    """The message list for a single prompt with an optional system message."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]
