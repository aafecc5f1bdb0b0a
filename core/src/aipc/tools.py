"""Tool calling for chat models: how tools and tool calls reach the model, and how its calls come back.

Two ways to show tools and a conversation's tool turns to a model:

- **the model's own**, when its chat template takes ``tools`` and defines a tool-call tag pair
  (``<tool_call>...</tool_call>`` as Qwen/Hermes, ``<|tool_call|>...<|/tool_call|>``): the
  template gets ``tools=`` (OpenAI's tool objects, as transformers passes them), assistant
  messages with ``tool_calls`` (``arguments`` as a dict) and ``role: "tool"`` messages as they are;
- **the generic format** (:func:`generic_messages`), for every other template:

  - the tools are listed in the system message (appended to the first system message, or a new
    one at the start), one JSON object ``{"name", "description", "parameters"}`` a line, after
    :data:`GENERIC_INSTRUCTION`;
  - an assistant's tool call is its message text ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
    (one a line, after any text of that message);
  - a tool's result is a user message ``<tool_response>RESULT</tool_response>`` (consecutive
    results share one user message, one a line).

The call envelope: a tool call is generated (or parsed) as the JSON object
``{"name": FUNCTION_NAME, "arguments": {...}}``, ``name`` first. For ``tool_choice`` ``required``
and a named function it is generated under :func:`call_schema` (``anyOf`` one envelope per
function: ``name`` a ``const``, ``arguments`` that function's ``parameters`` schema) right after
the format's opening tag, so the arguments always validate against the schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .constraints import Constraint

GENERIC_OPEN, GENERIC_CLOSE = "<tool_call>", "</tool_call>"
GENERIC_INSTRUCTION = (
    "You can call the following tools. Each line is one tool: its name, what it does and the JSON Schema "
    "of its arguments.\n{tools}\n"
    'To call a tool, answer with only <tool_call>{{"name": "TOOL_NAME", "arguments": {{...}}}}</tool_call>. '
    "Tool results come back in <tool_response></tool_response>. Otherwise answer in plain text."
)
#: tool-call tag pairs of known chat templates, recognised when the template's source contains them
NATIVE_TAGS = (("<tool_call>", "</tool_call>"), ("<|tool_call|>", "<|/tool_call|>"))
#: "text, or the opening tag of one tool call" (GBNF): the first stage of ``tool_choice: "auto"``
AUTO_GRAMMAR = 'root ::= "<tool_call>" | [^<] [^\\x00]*\n'


@dataclass(frozen=True)
class ToolFormat:
    """How one model sees tools: its own template (``native``) or the generic format, and the
    tags around one call."""

    native: bool
    open: str = GENERIC_OPEN
    close: str = GENERIC_CLOSE


def format_for(template) -> ToolFormat:
    """The model's own format when its template takes ``tools`` and has a known tag pair."""
    if template is not None and template.supports_tools:
        for open_, close in NATIVE_TAGS:
            if open_ in template.source:
                return ToolFormat(True, open_, close)
    return ToolFormat(False)


def _arguments(value: Any) -> Any:
    """A call's ``arguments`` as the templates expect them: a dict when the text is JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def native_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages for a template that handles tools itself (``arguments`` parsed to dicts)."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            message["tool_calls"] = [{**call, "function": {**call["function"],
                                                             "arguments": _arguments(call["function"]["arguments"])}}
                                     for call in message["tool_calls"]]
            if message.get("content") is None:
                message["content"] = ""
        out.append(message)
    return out


def describe_tools(tools: Sequence[dict[str, Any]]) -> str:
    lines = []
    for tool in tools:
        function = tool["function"]
        entry = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        lines.append(json.dumps(entry, ensure_ascii=False))
    return "\n".join(lines)


def envelope_text(name: str, arguments: Any) -> str:
    """``{"name": NAME, "arguments": ARGUMENTS}``: JSON text arguments kept as they are."""
    if isinstance(arguments, str) and not isinstance(_arguments(arguments), str):
        args = arguments
    else:
        args = json.dumps(arguments, ensure_ascii=False)
    return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {args}}}'


def generic_messages(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[dict[str, str]]:
    """Plain role/content messages in the generic format (see the module's docstring)."""
    out: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            text = f"<tool_response>{content}</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "_tool": True})
            continue
        if role == "assistant" and message.get("tool_calls"):
            calls = [f"{GENERIC_OPEN}{envelope_text(c['function']['name'], c['function']['arguments'])}{GENERIC_CLOSE}"
                     for c in message["tool_calls"]]
            content = "\n".join(([content] if content else []) + calls)
        out.append({"role": role, "content": content})
    if tools:
        listing = GENERIC_INSTRUCTION.format(tools=describe_tools(tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listing}"}
        else:
            out.insert(0, {"role": "system", "content": listing})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def render(model, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> tuple[str, ToolFormat]:
    """The prompt text for ``messages`` (with ``tools`` shown to the model, if any) and the format."""
    fmt = format_for(model.template)
    if fmt.native:
        return model.format_chat(native_messages(messages), tools=list(tools) if tools else None), fmt
    has_tool_turns = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if tools or has_tool_turns:
        return model.format_chat(generic_messages(messages, tools)), fmt
    return model.format_chat([{"role": m["role"], "content": m.get("content") or ""} for m in messages]), fmt


def call_schema(tools: Sequence[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """The JSON schema of one call envelope: of the function ``name``, or of any of ``tools``."""
    envelopes = []
    for tool in tools:
        function = tool["function"]
        if name is not None and function["name"] != name:
            continue
        parameters = function.get("parameters") or {"type": "object", "properties": {}, "additionalProperties": False}
        envelopes.append({"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                          "required": ["name", "arguments"], "additionalProperties": False})
    return envelopes[0] if len(envelopes) == 1 else {"anyOf": envelopes}


def call_constraint(tools: Sequence[dict[str, Any]], name: str | None = None) -> Constraint:
    return Constraint.json_schema(call_schema(tools, name))


# ---------------------------------------------------------------------------------- reading calls back


class CallStream:
    """Reads one generated call envelope, piece by piece, as OpenAI's streamed tool-call deltas:
    :meth:`feed` returns ``("name", NAME)`` once the name is known, then ``("arguments", FRAGMENT)``
    pieces of the arguments' JSON text as generated; :meth:`finish` returns the last fragment
    events, and :attr:`name` / :attr:`arguments` hold the whole call (``arguments`` None when the
    envelope did not parse, e.g. cut by ``max_tokens``)."""

    _HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
    _TAIL = "} \t\r\n"

    def __init__(self) -> None:
        self.text = ""
        self.name: str | None = None
        self.arguments: str | None = None
        self._start: int | None = None
        self._sent = 0

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.text += piece
        events: list[tuple[str, str]] = []
        if self._start is None:
            match = self._HEAD.match(self.text)
            if not match:
                return events
            self.name = json.loads(f'"{match.group(1)}"')
            self._start = match.end()
            events.append(("name", self.name))
        if not self._sent:  # the arguments start at their first non-blank character
            body = self.text[self._start:]
            self._start += len(body) - len(body.lstrip())
        ready = self.text[self._start:].rstrip(self._TAIL)  # the envelope's "}" may be next: hold it back
        if len(ready) > self._sent:
            events.append(("arguments", ready[self._sent:]))
            self._sent = len(ready)
        return events

    def finish(self) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        try:
            whole = json.loads(self.text)
        except ValueError:
            return events
        if not isinstance(whole, dict) or not isinstance(whole.get("name"), str) or "arguments" not in whole:
            return events
        if self._start is not None:
            body = self.text[self._start:].rstrip()
            arguments = body[:-1].rstrip() if body.endswith("}") else body
            try:
                json.loads(arguments)
            except ValueError:
                arguments = None
        else:
            arguments = None
        if arguments is None or self._sent > len(arguments):  # not as expected: the arguments at once
            arguments = json.dumps(whole["arguments"], ensure_ascii=False)
            self._sent = 0 if self._start is None else self._sent
        if self._start is None:
            events.append(("name", whole["name"]))
        self.name = whole["name"]
        if len(arguments) > self._sent:
            events.append(("arguments", arguments[self._sent:]))
        self.arguments = arguments
        return events


def parse_native(text: str, fmt: ToolFormat) -> tuple[str, list[str]]:
    """Text generated without constraint: (the text outside tool calls, the call envelopes as JSON
    text). A call is ``OPEN json CLOSE`` (CLOSE optional at the end); its JSON is an envelope or a
    list of them (``parameters`` is read as ``arguments``). A call that does not parse stays text."""
    outside, calls = [], []
    pos = 0
    while True:
        start = text.find(fmt.open, pos)
        if start < 0:
            outside.append(text[pos:])
            break
        end = text.find(fmt.close, start)
        body = text[start + len(fmt.open): end if end >= 0 else len(text)]
        stop = end + len(fmt.close) if end >= 0 else len(text)
        found = _envelopes(body)
        if found is None:
            outside.append(text[pos:stop])
        else:
            outside.append(text[pos:start])
            calls.extend(found)
        pos = stop
        if end < 0:
            break
    return "".join(outside).strip() if calls else text, calls


def _envelopes(body: str) -> list[str] | None:
    try:
        value = json.loads(body.strip())
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        out.append(envelope_text(item["name"], _arguments(arguments)))
    return out or None
