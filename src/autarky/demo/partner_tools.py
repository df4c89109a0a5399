"""The partner simulator's tool calling and JSON output, in both wire formats: deterministic answers built from
the request's own schemas, so tests can predict them exactly.

Rules: with tools offered (and tool_choice not none) and the last turn not a tool result — or tool_choice
forcing a call — the answer calls the named tool, else the first tool, and also the second when parallel calls
are allowed and no tool is named. Arguments are `example(schema)`. With a JSON response_format the text is
`example(schema)` as JSON."""

from __future__ import annotations

import uuid

import orjson


def example(schema: object, depth: int = 0) -> object:
    """A value valid for `schema` (the JSON Schema subset tools use): first enum/const, minimums, every property."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        return {k: example(v, depth + 1) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [example(schema.get("items") or {"type": "string"}, depth + 1)
                for _ in range(max(1, int(schema.get("minItems") or 1)))]
    if kind == "string":
        return "x" * max(1, int(schema.get("minLength") or 1))
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    return None


def _last_is_tool_result(messages: list) -> bool:
    last = messages[-1] if messages else {}
    if not isinstance(last, dict):
        return False
    if last.get("role") == "tool":
        return True
    content = last.get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def openai_calls(body: dict) -> list[dict]:
    """The tool calls an OpenAI-format answer makes (empty: answer with text)."""
    tools = [t.get("function") or {} for t in body.get("tools") or () if isinstance(t, dict)]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return []
    named = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if choice == "auto" and _last_is_tool_result(body.get("messages") or []):
        return []
    picked = [t for t in tools if t.get("name") == named][:1] if named else tools[:1]
    if not named and body.get("parallel_tool_calls", True) and len(tools) > 1:
        picked = tools[:2]
    return [{"id": "call_" + uuid.uuid4().hex[:20], "type": "function",
             "function": {"name": t.get("name", ""), "arguments": orjson.dumps(example(t.get("parameters"))).decode()}}
            for t in picked]


def anthropic_calls(body: dict) -> list[dict]:
    """The tool_use blocks an Anthropic-format answer makes (empty: answer with text)."""
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return []
    if choice.get("type") == "auto" and _last_is_tool_result(body.get("messages") or []):
        return []
    named = choice.get("name") if choice.get("type") == "tool" else None
    picked = [t for t in tools if t.get("name") == named][:1] if named else tools[:1]
    if not named and not choice.get("disable_parallel_tool_use") and len(tools) > 1:
        picked = tools[:2]
    return [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], "name": t.get("name", ""),
             "input": example(t.get("input_schema")) or {}} for t in picked]


def json_text(body: dict) -> str | None:
    """The JSON text an OpenAI-format answer gives for a JSON response_format, else None."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return orjson.dumps(example((fmt.get("json_schema") or {}).get("schema"))).decode()
    if fmt.get("type") == "json_object":
        return '{"answer": "yes"}'
    return None


def fragments(text: str) -> list[str]:
    """A JSON text in two pieces cut mid-way, as real streams cut arguments anywhere."""
    cut = max(1, len(text) // 2)
    return [text[:cut], text[cut:]] if len(text) > 1 else [text]


def has_cache_control(body: dict) -> bool:
    def walk(value: object) -> bool:
        if isinstance(value, dict):
            return "cache_control" in value or any(walk(v) for v in value.values())
        if isinstance(value, list):
            return any(walk(v) for v in value)
        return False

    return walk(body.get("system")) or walk(body.get("messages")) or walk(body.get("tools"))
