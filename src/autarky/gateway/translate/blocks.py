"""The pieces both directions share: stop reasons, usage, content parts ↔ blocks, tools and tool_choice."""

from __future__ import annotations

import orjson

from autarky.gateway.errors import bad_request

STOP_TO_OPENAI = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}
STOP_TO_ANTHROPIC = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                     "function_call": "tool_use", "content_filter": "refusal", None: "end_turn"}

# A private key on an internal OpenAI chunk: the upstream's usage as known at the start of a stream (an
# Anthropic upstream's message_start), so an Anthropic client's message_start carries the real input count.
# ExchangeStream pops it before a chunk leaves for an OpenAI client.
START_USAGE = "_start_usage"


# ---- usage ------------------------------------------------------------------------------------------------

def usage_to_openai(u: dict) -> dict:
    """Anthropic usage → OpenAI usage. OpenAI's prompt_tokens include cached ones; Anthropic's input_tokens
    do not, so the cache reads and writes are added back and named in prompt_tokens_details."""
    read = int(u.get("cache_read_input_tokens") or 0)
    written = int(u.get("cache_creation_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + read + written
    completion = int(u.get("output_tokens") or 0)
    out: dict = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if read or written:
        # cache_creation_tokens is ours (OpenAI has no cache writes); it lets Anthropic ingress get it back.
        out["prompt_tokens_details"] = {"cached_tokens": read, "cache_creation_tokens": written}
    return out


def usage_to_anthropic(u: dict) -> dict:
    details = u.get("prompt_tokens_details") or {}
    read = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_creation_tokens") or 0)
    out = {"input_tokens": max(0, int(u.get("prompt_tokens") or 0) - read - written),
           "output_tokens": int(u.get("completion_tokens") or 0)}
    if read or written:
        out["cache_read_input_tokens"] = read
        out["cache_creation_input_tokens"] = written
    return out


# ---- content: OpenAI parts <-> Anthropic blocks -----------------------------------------------------------

def _cache(src: dict, dst: dict) -> dict:
    if src.get("cache_control") is not None:
        dst["cache_control"] = src["cache_control"]
    return dst


def block_to_part(block: object, where: str) -> dict:
    """An Anthropic text or image block as an OpenAI content part."""
    kind = block.get("type") if isinstance(block, dict) else type(block).__name__
    if kind == "text" and isinstance(block.get("text"), str):
        return _cache(block, {"type": "text", "text": block["text"]})
    if kind == "image":
        src = block.get("source")
        src = src if isinstance(src, dict) else {}
        if src.get("type") == "base64" and src.get("data") and src.get("media_type"):
            return _cache(block, {"type": "image_url",
                                  "image_url": {"url": f"data:{src['media_type']};base64,{src['data']}"}})
        if src.get("type") == "url" and src.get("url"):
            return _cache(block, {"type": "image_url", "image_url": {"url": src["url"]}})
        raise bad_request(f"{where}: unsupported content block 'image' without a base64 or url source", param=where)
    raise bad_request(f"{where}: unsupported content block {kind!r}; the gateway carries text, image, tool_use, "
                      "tool_result and thinking blocks", param=where)


def part_to_block(part: object, where: str) -> dict:
    """An OpenAI content part as an Anthropic block."""
    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
    if kind == "text" and isinstance(part.get("text"), str):
        return _cache(part, {"type": "text", "text": part["text"]})
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if isinstance(url, str) and url.startswith("data:"):
            head, _, data = url[5:].partition(",")
            media, _, encoding = head.partition(";")
            if encoding != "base64" or not data:
                raise bad_request(f"{where}: image data URLs must be base64", param=where)
            return _cache(part, {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            return _cache(part, {"type": "image", "source": {"type": "url", "url": url}})
        raise bad_request(f"{where}: image_url.url must be a data: or http(s) URL", param=where)
    raise bad_request(f"{where}: content part {kind!r} cannot be sent to an Anthropic provider", param=where)


def plain(parts: list[dict]) -> bool:
    """Text only and no cache hints: such content travels as a plain string."""
    return all(p.get("type") == "text" and "cache_control" not in p for p in parts)


def blocks_to_content(blocks: object, where: str) -> str | list[dict]:
    """Anthropic content (a string or text/image blocks) as OpenAI content."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise bad_request(f"{where}: content must be a string or a list of blocks", param=where)
    parts = [block_to_part(b, f"{where}.{i}") for i, b in enumerate(blocks)]
    return "".join(p["text"] for p in parts) if plain(parts) else parts


def content_to_blocks(content: object, where: str) -> str | list[dict]:
    """OpenAI content (a string, None or parts) as Anthropic content."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or a list of parts", param=where)
    blocks = [part_to_block(p, f"{where}.{i}") for i, p in enumerate(content)]
    if plain(blocks):
        return "".join(b["text"] for b in blocks)
    return blocks


# ---- tools ------------------------------------------------------------------------------------------------

def tool_to_anthropic(tool: object, where: str) -> dict:
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise bad_request(f"{where}: only function tools with a name can be sent to an Anthropic provider",
                          param=where)
    out = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
    if fn.get("description"):
        out["description"] = fn["description"]
    return _cache(tool, out)


def tool_to_openai(tool: object, where: str) -> dict:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise bad_request(f"{where}: tool type {kind!r} (a server tool) cannot be carried; only client tools with "
                          "a name and input_schema", param=where)
    fn: dict = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        fn["description"] = tool["description"]
    return _cache(tool, {"type": "function", "function": fn})


def tool_choice_to_openai(choice: object, where: str = "tool_choice") -> str | dict:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind or "")
    if mapped is None:
        raise bad_request(f"{where}: type must be auto, any, tool or none", param=where)
    return mapped


def tool_choice_to_anthropic(choice: object, where: str = "tool_choice") -> dict:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise bad_request(f"{where}: a named choice needs function.name", param=where)
        return {"type": "tool", "name": name}
    mapped = {"auto": "auto", "required": "any", "none": "none"}.get(choice if isinstance(choice, str) else "")
    if mapped is None:
        raise bad_request(f"{where}: must be auto, none, required or a named function", param=where)
    return {"type": mapped}


def arguments_of(call: dict, where: str) -> dict:
    """A tool call's arguments (a JSON string in OpenAI) as an Anthropic tool_use input (an object)."""
    raw = (call.get("function") or {}).get("arguments")
    if raw in (None, ""):
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise bad_request(f"{where}: tool call arguments must be a JSON object", param=where)
    return value


def call_to_tool_use(call: object, where: str) -> dict:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise bad_request(f"{where}: a tool call needs function.name", param=where)
    out = {"type": "tool_use", "id": call.get("id") or "", "name": call["function"]["name"],
           "input": arguments_of(call, f"{where}.function.arguments")}
    return _cache(call, out)


def tool_use_to_call(block: dict) -> dict:
    return _cache(block, {"id": block.get("id", ""), "type": "function",
                          "function": {"name": block.get("name", ""),
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})


# ---- what an OpenAI-kind upstream must not see ------------------------------------------------------------

def openai_only(body: dict, top_k: bool = False) -> dict:
    """The body without our Anthropic-only extensions (a copy only where something is removed); `top_k` kept
    when the upstream takes it (vLLM and autarky serve do, OpenAI does not).
    `cache_control` is a hint OpenAI-kind servers have no field for (they cache prefixes on their own) and
    `is_error` has no OpenAI field: the tool message's content still says what went wrong."""
    out = body
    drop = _DROP_KEEPING_TOP_K if top_k else _DROP
    if not drop.isdisjoint(body):
        out = {k: v for k, v in body.items() if k not in drop}
    tools = body.get("tools")
    if isinstance(tools, list) and any(isinstance(t, dict) and "cache_control" in t for t in tools):
        out = {**out, "tools": [_strip(t) for t in tools]}
    messages = body.get("messages")
    if isinstance(messages, list) and any(map(_marked, messages)):
        out = {**out, "messages": [_clean(m) if _marked(m) else m for m in messages]}
    return out


_DROP = frozenset(("thinking", "top_k", "anthropic_extra"))
_DROP_KEEPING_TOP_K = _DROP - {"top_k"}
_PLAIN = frozenset(("role", "content", "name", "tool_call_id", "tool_calls"))


def _strip(d: object, keys: tuple[str, ...] = ("cache_control",)) -> object:
    return {k: v for k, v in d.items() if k not in keys} if isinstance(d, dict) else d


def _marked(m: object) -> bool:
    if type(m) is not dict:
        return False
    if type(m.get("content")) is str and "tool_calls" not in m and m.keys() <= _PLAIN:
        return False  # the common case, decided without looking further
    if "is_error" in m or "thinking_blocks" in m or "cache_control" in m:
        return True
    parts = m.get("content")
    calls = m.get("tool_calls")
    return ((isinstance(parts, list) and any(isinstance(p, dict) and "cache_control" in p for p in parts))
            or (isinstance(calls, list) and any(isinstance(c, dict) and "cache_control" in c for c in calls)))


def _clean(m: dict) -> dict:
    out = _strip(m, ("is_error", "thinking_blocks", "cache_control"))
    if isinstance(out.get("content"), list):
        out["content"] = [_strip(p) for p in out["content"]]
    if isinstance(out.get("tool_calls"), list):
        out["tool_calls"] = [_strip(c) for c in out["tool_calls"]]
    return out
