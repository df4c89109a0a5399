"""Format validity, kept apart from task score: structured output that parses and validates against the schema a
suite asked for, and tool calls that are valid calls of a declared tool. Also the exact-call comparison the
tool-use grader scores with.

A tool-calling reply is stored (and graded) as an envelope the runner writes from the wire, never from the
model's text: `{"content": "...", "tool_calls": [{"name": ..., "arguments": "<JSON text>"}]}`. A model that answers
with text, even text that looks like a call, has an empty `tool_calls`.

Schemas are checked with `jsonschema` (Draft 2020-12). `format` is an annotation there, as the specification
says by default, so "format": "email" does not reject a value; the expected-value comparison does.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

NEEDS = ("tools", "json_schema")  # what a suite may require of an endpoint (suite.toml `needs`)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as the OpenAI wire carries it


def encode_calls(content: str, calls: list[ToolCall]) -> str:
    """The stored output of a tool-calling reply."""
    return json.dumps({"content": content, "tool_calls": [asdict(c) for c in calls]}, ensure_ascii=False)


def decode_calls(output: str) -> tuple[str, list[ToolCall]]:
    """(content, calls) of an envelope; anything else is plain text with no calls."""
    try:
        data = json.loads(output)
    except (json.JSONDecodeError, TypeError):
        return output, []
    if not isinstance(data, dict) or not isinstance(data.get("tool_calls"), list):
        return output, []
    calls = [ToolCall(str(c.get("name", "")), str(c.get("arguments", ""))) for c in data["tool_calls"]
             if isinstance(c, dict)]
    return str(data.get("content") or ""), calls


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a usable JSON Schema, or None."""
    if not isinstance(schema, dict):
        return "a schema must be a JSON object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    return None


def validation_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """The first way `value` breaks `schema`, or None when it validates."""
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path)) or "(root)"
    return f"{where}: {error.message}"


def json_problem(text: str, schema: dict[str, Any]) -> str | None:
    """Why `text` (the whole reply, no fences or prose) is not JSON valid for `schema`, or None."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at {exc.pos}"
    return validation_problem(value, schema)


def declared(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name → parameters schema of OpenAI-format tools."""
    out = {}
    for tool in tools:
        function = tool.get("function") or {}
        out[str(function.get("name", ""))] = function.get("parameters") or {"type": "object"}
    return out


def call_arguments(call: ToolCall) -> Any:
    """The call's arguments as a value; raises ValueError when they are not a JSON object."""
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments of {call.name!r} are not JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"arguments of {call.name!r} are not a JSON object")
    return value


def call_problem(call: ToolCall, tools: dict[str, dict[str, Any]]) -> str | None:
    """Why `call` is not a valid call of one of `tools`, or None."""
    if call.name not in tools:
        return f"called {call.name!r}, which is not a declared tool ({', '.join(sorted(tools))})"
    try:
        arguments = call_arguments(call)
    except ValueError as exc:
        return str(exc)
    problem = validation_problem(arguments, tools[call.name])
    return f"arguments of {call.name!r} break its schema at {problem}" if problem else None


def calls_problem(output: str, tools: list[dict[str, Any]]) -> str | None:
    """Why a stored tool-calling reply is not format-valid (at least one call, each valid), or None."""
    _content, calls = decode_calls(output)
    if not calls:
        return "answered with text, not a tool call"
    schemas = declared(tools)
    return next((p for p in (call_problem(c, schemas) for c in calls) if p), None)


# --- the exact-call comparison -----------------------------------------------------------------------------

def _datetime(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    # A naive time means UTC (the prompts say so); compare instants, not spellings.
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def normalize(value: Any, schema: dict[str, Any], unordered: bool = False) -> Any:
    """A comparable form of `value` under `schema`: numbers by value, strings trimmed (case-folded for enums and
    emails, date-times as instants), objects by key, arrays sorted when `unordered`."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        text = value.strip()
        if schema.get("format") == "date-time" and (moment := _datetime(text)) is not None:
            return moment.isoformat()
        return text.casefold() if "enum" in schema or schema.get("format") == "email" else text
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        return {k: normalize(v, props.get(k) or {}) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalize(v, schema.get("items") or {}) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True)) if unordered else items
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def argument_mismatches(got: dict[str, Any], expected: dict[str, Any], schema: dict[str, Any],
                        unordered: list[str]) -> list[str]:
    """Top-level argument names whose values differ from the expected ones (missing and extra ones included)."""
    props = schema.get("properties") or {}
    wrong = []
    for name in sorted(set(got) | set(expected)):
        if name not in got or name not in expected:
            wrong.append(name)
            continue
        sub = props.get(name) or {}
        if not _same(normalize(got[name], sub, name in unordered), normalize(expected[name], sub, name in unordered)):
            wrong.append(name)
    return wrong


def exact_call(item: dict[str, Any], output: str) -> tuple[float, float, str]:
    """(score, format_valid, why) of a stored tool-calling reply against the item's expected call: 1 when it makes
    exactly that call, of that function, with arguments valid for its schema and equal to the expected ones."""
    _content, calls = decode_calls(output)
    problem = calls_problem(output, item["tools"])
    want = item["expected"]
    if problem is not None or len(calls) != 1 or calls[0].name != want["name"]:
        got = ", ".join(c.name for c in calls) or "no call"
        return 0.0, float(problem is None), problem or f"called {got}; expected only {want['name']}"
    wrong = argument_mismatches(call_arguments(calls[0]), want["arguments"], declared(item["tools"])[want["name"]],
                                item.get("unordered", []))
    return float(not wrong), 1.0, f"wrong {', '.join(wrong)}" if wrong else "exact call"


def tool_item_problem(item: dict[str, Any]) -> str | None:
    """Why a tool-use item is malformed (tools, expected call, unordered), or None: checked when a suite loads."""
    tools = item.get("tools")
    if not isinstance(tools, list) or not tools or not all(isinstance(t, dict) for t in tools):
        return "tools must be a non-empty list of OpenAI function tools"
    schemas = declared(tools)
    if len(schemas) != len(tools) or "" in schemas:
        return "each tool needs a unique function.name"
    for name, schema in schemas.items():
        if (problem := schema_problem(schema)) is not None:
            return f"tool {name!r} parameters: {problem}"
    expected = item.get("expected")
    if not isinstance(expected, dict) or not isinstance(expected.get("arguments"), dict):
        return 'expected must be {"name": TOOL, "arguments": {...}}'
    if expected.get("name") not in schemas:
        return f"expected names {expected.get('name')!r}, which is not among the item's tools"
    if (problem := validation_problem(expected["arguments"], schemas[expected["name"]])) is not None:
        return f"expected arguments break the tool's schema at {problem}"
    if not isinstance(item.get("unordered", []), list):
        return "unordered must be a list of argument names"
    return None
