"""Function calling: tools in the prompt, tool history in the prompt, model output parsed into `tool_calls`.

Prompts go through the model's own chat template when it knows tools (`tools` in its source: it is rendered
with `tools=` as transformers' `apply_chat_template` does). Otherwise, ONE fallback format, Hermes/Qwen style:
the tools are listed as JSON inside `<tools></tools>` in the system prompt, the model calls them as
`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, past calls are rendered the same way in the
assistant's turn, and tool results come back as a user turn wrapped in `<tool_response></tool_response>`.
Output is parsed for `<tool_call>` blocks in both cases. `tool_choice` `required` or a named function turns
into a grammar (serve/structured.py) that only admits valid calls of the declared tools.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from autarky.serve.errors import InvalidRequest
from autarky.serve.structured import JSON_OPTIONS, Grammar

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_TOOL_CALLS = 16  # parsed from one output (untrusted): the rest stays text
MAX_FORCED_CALLS = 8  # parallel calls a `required` grammar admits
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)

FALLBACK_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict
    spec: dict  # the request's {"type": "function", "function": {...}}, as templates want it


def parse_tools(raw: list[dict[str, Any]] | None) -> list[Tool]:
    tools = []
    for i, entry in enumerate(raw or []):
        fn = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidRequest(f"tools[{i}]: only tools of type 'function' are supported", param="tools")
        name, params = fn.get("name"), fn.get("parameters")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools[{i}].function.name is required", param="tools")
        if params is None:  # OpenAI: no parameters means an empty argument list
            params = {"type": "object", "properties": {}, "additionalProperties": False}
        if not isinstance(params, dict):
            raise InvalidRequest(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        tools.append(Tool(name, params, {"type": "function", "function": fn}))
    if len({t.name for t in tools}) < len(tools):
        raise InvalidRequest("tools: function names must be unique", param="tools")
    return tools


@dataclass(frozen=True)
class ToolUse:
    """The tools a chat request declares, and what its tool_choice makes of them."""

    tools: list[Tool]
    choice: str  # auto, required, or the forced function's name
    parallel: bool = True

    @classmethod
    def from_request(cls, tools: list[dict] | None, tool_choice: str | dict | None,
                     parallel: bool | None) -> ToolUse | None:
        declared = parse_tools(tools)
        if isinstance(tool_choice, dict):
            fn = tool_choice.get("function") if tool_choice.get("type") == "function" else None
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(name, str) or name not in {t.name for t in declared}:
                raise InvalidRequest("tool_choice names no declared function", param="tool_choice")
            choice = name
        elif tool_choice in (None, "auto", "none", "required"):
            choice = tool_choice or "auto"
            if choice == "required" and not declared:
                raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")
        else:
            raise InvalidRequest(f"unknown tool_choice {tool_choice!r}", param="tool_choice")
        if not declared or choice == "none":  # `none`: the tools are not offered to the model at all
            return None
        return cls(declared, choice, parallel is not False)

    @property
    def forced(self) -> bool:
        return self.choice != "auto"

    def grammar(self) -> Grammar | None:
        """For `required` or a named function: only valid calls of declared tools."""
        if not self.forced:
            return None
        chosen = [t for t in self.tools if self.choice in ("required", t.name)]
        calls = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                  "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
        schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": JSON_OPTIONS}
        repeat = f' ("\\n" call){{0,{MAX_FORCED_CALLS - 1}}}' if self.parallel and self.choice == "required" else ""
        lark = (f"start: call{repeat}\ncall: {json.dumps(CALL_OPEN + chr(10))} obj {json.dumps(chr(10) + CALL_CLOSE)}"
                f"\nobj: %json {json.dumps(schema)}\n")
        return Grammar("lark", lark, "tool_choice")


def template_messages(messages: list[dict], tools: ToolUse | None, native: bool) -> tuple[list[dict], list | None]:
    """The chat messages (OpenAI dicts, tool_calls and tool results included) as the template renders them, and
    the `tools` to pass it. `native`: the model's template knows tools; else the fallback format."""
    out: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        calls = m.get("tool_calls") or []
        if native:
            entry = {"role": role, "content": content}
            if calls:
                entry["tool_calls"] = [_with_parsed_arguments(c) for c in calls]
            if role == "tool" and m.get("tool_call_id"):
                entry["tool_call_id"] = m["tool_call_id"]
            out.append(entry)
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        elif calls:
            blocks = [f"{CALL_OPEN}\n{json.dumps(_call_json(c), ensure_ascii=False)}\n{CALL_CLOSE}" for c in calls]
            out.append({"role": role, "content": "\n".join([content, *blocks] if content else blocks)})
        else:
            out.append({"role": role, "content": content})
    if tools is None:
        return out, None
    if native:
        return out, [t.spec for t in tools.tools]
    listing = FALLBACK_SYSTEM.format(tools="\n".join(json.dumps(t.spec, ensure_ascii=False) for t in tools.tools))
    if out and out[0]["role"] in ("system", "developer"):
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listing}"}
    else:
        out.insert(0, {"role": "system", "content": listing})
    return out, None


def _call_json(call: dict) -> dict:
    fn = call.get("function") or {}
    return {"name": fn.get("name"), "arguments": _arguments(fn.get("arguments"))}


def _with_parsed_arguments(call: dict) -> dict:
    # Templates render arguments with `tojson` (vLLM hands them a dict too).
    fn = dict(call.get("function") or {})
    fn["arguments"] = _arguments(fn.get("arguments"))
    return {**call, "function": fn}


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw if raw is not None else {}


def _parse_call(body: str, names: set[str]) -> dict | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    args = data.get("arguments", data.get("parameters", {}))
    if not isinstance(args, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": data["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


def parse_output(text: str, tools: ToolUse, truncated: bool = False) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a finished output; blocks that do not parse as a declared call stay text.
    `truncated` (finish_reason "length"): a block the limit cut off is dropped, not returned as content."""
    if truncated and (cut := _cut_call(text)) is not None:
        text = text[:cut]
    names = {t.name for t in tools.tools}
    calls, content, last = [], [], 0
    for match in _CALL.finditer(text):
        if len(calls) >= MAX_TOOL_CALLS:
            break
        call = _parse_call(match.group(1), names)
        if call is None:
            continue
        content.append(text[last : match.start()])
        calls.append(call)
        last = match.end()
    content.append(text[last:])
    joined = "".join(content).strip() if calls else "".join(content)
    return (joined or None) if calls else joined, calls


def _cut_call(text: str) -> int | None:
    """Where a `<tool_call>` block that never closes begins (None if every block closes)."""
    start = text.find(CALL_OPEN)
    while start >= 0 and text.find(CALL_CLOSE, start) >= 0:
        start = text.find(CALL_OPEN, start + 1)
    return start if start >= 0 else None


@dataclass
class ToolCallStream:
    """One choice's streamed text split into content deltas and OpenAI tool-call deltas, as it arrives."""

    tools: ToolUse
    buffer: str = ""
    calls: int = 0
    _names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._names = {t.name for t in self.tools.tools}

    def feed(self, text: str) -> list[dict]:
        """Deltas (`{"content": ...}` or `{"tool_calls": [...]}`) releasable after `text`."""
        self.buffer += text
        out: list[dict] = []
        while True:
            start = self.buffer.find(CALL_OPEN)
            if start < 0:
                keep = _partial_suffix(self.buffer, CALL_OPEN)
                self._content(self.buffer[: len(self.buffer) - keep], out)
                self.buffer = self.buffer[len(self.buffer) - keep :]
                return out
            end = self.buffer.find(CALL_CLOSE, start)
            if end < 0:
                self._content(self.buffer[:start], out)
                self.buffer = self.buffer[start:]
                return out
            call = _parse_call(self.buffer[start + len(CALL_OPEN) : end], self._names) \
                if self.calls < MAX_TOOL_CALLS else None
            stop = end + len(CALL_CLOSE)
            if call is None:
                self._content(self.buffer[:stop], out)
            else:
                self._content(self.buffer[:start], out)
                self._call(call, out)
            self.buffer = self.buffer[stop:]

    def finish(self, truncated: bool = False) -> list[dict]:
        """The held-back text; `truncated` as in parse_output (the buffer then holds the cut block, if any)."""
        out: list[dict] = []
        if not (truncated and _cut_call(self.buffer) == 0):
            self._content(self.buffer, out)
        self.buffer = ""
        return out

    def _content(self, text: str, out: list[dict]) -> None:
        if text and not (self.calls and not text.strip()):  # whitespace between calls is no content
            out.append({"content": text})

    def _call(self, call: dict, out: list[dict]) -> None:
        fn = call["function"]
        head = {"index": self.calls, "id": call["id"], "type": "function",
                "function": {"name": fn["name"], "arguments": ""}}
        out.append({"tool_calls": [head]})
        args = fn["arguments"]
        step = max(1, len(args) // 2 + 1)  # arguments arrive in fragments, as OpenAI streams them
        for i in range(0, len(args), step):
            out.append({"tool_calls": [{"index": self.calls, "function": {"arguments": args[i : i + step]}}]})
        self.calls += 1


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that could begin `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0
