"""Anthropic egress: the internal OpenAI chat request out as a Messages request; Anthropic results back as OpenAI.

`response_format` has no Messages field: json_schema (and json_object) become one forced tool whose input_schema
is the schema, and that tool's input comes back as the message content (finish_reason "stop")."""

from __future__ import annotations

import time
import uuid

import orjson

from autarky.gateway.errors import bad_request
from autarky.gateway.translate.blocks import (
    START_USAGE,
    STOP_TO_OPENAI,
    call_to_tool_use,
    content_to_blocks,
    tool_choice_to_anthropic,
    tool_to_anthropic,
    tool_use_to_call,
    usage_to_openai,
)

JSON_TOOL = "json_response"


def json_tool_name(body: dict) -> str | None:
    """The forced tool's name when response_format asks for JSON, else None."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("json_schema"), dict):
            raise bad_request("response_format.json_schema: an object is required", param="response_format")
        return str(fmt["json_schema"].get("name") or JSON_TOOL)
    if fmt.get("type") == "json_object":
        return JSON_TOOL
    raise bad_request(f"response_format.type: {fmt.get('type')!r} is not text, json_object or json_schema",
                      param="response_format")


def _as_list(content: str | list[dict]) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _append(messages: list[dict], role: str, content: str | list[dict]) -> None:
    """Anthropic needs alternating turns: consecutive same-role content joins one turn."""
    if not messages or messages[-1]["role"] != role:
        messages.append({"role": role, "content": content})
        return
    last = messages[-1]
    if isinstance(last["content"], str) and isinstance(content, str):
        last["content"] += "\n\n" + content
    else:
        last["content"] = _as_list(last["content"]) + _as_list(content)


def _assistant(m: dict, where: str) -> str | list[dict]:
    text = content_to_blocks(m.get("content"), f"{where}.content")
    calls = m.get("tool_calls") or []
    thinking = m.get("thinking_blocks") or []
    if not isinstance(calls, list):
        raise bad_request(f"{where}.tool_calls: must be a list", param=f"{where}.tool_calls")
    if not calls and not thinking:
        return text
    blocks = list(thinking) + ([b for b in _as_list(text) if b.get("type") != "text" or b.get("text")])
    blocks += [call_to_tool_use(c, f"{where}.tool_calls.{j}") for j, c in enumerate(calls)]
    return blocks


def _tool_result(m: dict, where: str) -> dict:
    if not isinstance(m.get("tool_call_id"), str):
        raise bad_request(f"{where}.tool_call_id: required", param=f"{where}.tool_call_id")
    block: dict = {"type": "tool_result", "tool_use_id": m["tool_call_id"],
                   "content": content_to_blocks(m.get("content"), f"{where}.content")}
    if m.get("is_error") is not None:
        block["is_error"] = bool(m["is_error"])
    if m.get("cache_control") is not None:
        block["cache_control"] = m["cache_control"]
    return block


def _system(parts: list[str | list[dict]]) -> str | list[dict]:
    if all(isinstance(p, str) for p in parts):
        return "\n\n".join(parts)  # type: ignore[arg-type]
    return [b for p in parts for b in _as_list(p)]  # blocks keep their cache_control


def openai_request_to_anthropic(body: dict, upstream_model: str, default_max_tokens: int) -> dict:
    system: list[str | list[dict]] = []
    messages: list[dict] = []
    for i, m in enumerate(body.get("messages") or ()):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise bad_request(f"{where}: a message must be an object", param=where)
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(content_to_blocks(m.get("content") or "", f"{where}.content"))
        elif role == "user":
            _append(messages, "user", content_to_blocks(m.get("content") or "", f"{where}.content"))
        elif role == "assistant":
            _append(messages, "assistant", _assistant(m, where))
        elif role == "tool":
            _append(messages, "user", [_tool_result(m, where)])
        else:
            raise bad_request(f"{where}.role: {role!r} cannot be sent to an Anthropic provider",
                              param=f"{where}.role")
    req: dict = {"model": upstream_model, "messages": messages,
                 "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens}
    if system:
        req["system"] = _system(system)
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                     ("thinking", "thinking")):
        if body.get(src) is not None:
            req[dst] = body[src]
    stop = body.get("stop")
    if stop:
        if not isinstance(stop, str | list) or not all(isinstance(x, str) for x in ([stop] if isinstance(stop, str) else stop)):
            raise bad_request("stop: a string or a list of strings", param="stop")
        req["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        req["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools and not isinstance(tools, list):
        raise bad_request("tools: must be a list", param="tools")
    if tools:
        req["tools"] = [tool_to_anthropic(t, f"tools.{i}") for i, t in enumerate(tools)]
    if body.get("tool_choice") is not None:
        req["tool_choice"] = tool_choice_to_anthropic(body["tool_choice"])
    if body.get("parallel_tool_calls") is False and tools:
        choice = req.setdefault("tool_choice", {"type": "auto"})
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    _json_tool(body, req)
    extra = body.get("anthropic_extra")
    if isinstance(extra, dict):
        req.update({k: v for k, v in extra.items() if k not in req})
    if body.get("stream"):
        req["stream"] = True
    return req


def _json_tool(body: dict, req: dict) -> None:
    name = json_tool_name(body)
    if name is None:
        return
    if body.get("tools"):
        raise bad_request("response_format: an Anthropic provider answers JSON through a forced tool, so it "
                          "cannot be combined with tools", param="response_format")
    fmt = body["response_format"]
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
    schema = schema or {"type": "object"}
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise bad_request("response_format.json_schema.schema: an Anthropic provider needs a schema whose type is "
                          "object", param="response_format")
    req["tools"] = [{"name": name, "description": "Answer with the response, as this tool's input.",
                     "input_schema": schema}]
    req["tool_choice"] = {"type": "tool", "name": name}


# ---- results ----------------------------------------------------------------------------------------------

def _finish(stop: str | None, sequence: str | None, json_tool: str | None) -> tuple[str, str | None]:
    if json_tool is not None and stop == "tool_use":
        return "stop", None
    return STOP_TO_OPENAI.get(stop or "", "stop"), sequence if stop == "stop_sequence" else None


def anthropic_response_to_openai(resp: dict, model: str, json_tool: str | None = None) -> dict:
    text: list[str] = []
    calls: list[dict] = []
    thinking: list[dict] = []
    for block in resp.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use" and json_tool is not None and block.get("name") == json_tool:
            text.append(orjson.dumps(block.get("input") or {}).decode())
        elif kind == "tool_use":
            calls.append(tool_use_to_call(block))
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(block)
    message: dict = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
        message["thinking_blocks"] = thinking  # signatures, for an Anthropic client's next turn
    finish, matched = _finish(resp.get("stop_reason"), resp.get("stop_sequence"), json_tool)
    choice: dict = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    if matched is not None:
        choice["stop_reason"] = matched  # vLLM's field for the stop string that ended the choice
    return {
        "id": "chatcmpl-" + str(resp.get("id", uuid.uuid4().hex)).removeprefix("msg_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage_to_openai(resp.get("usage") or {}),
    }


class AnthropicToOpenAIChunks:
    """Feeds Anthropic stream events, returns OpenAI chat chunks (role chunk, deltas, finish, usage).

    Each tool_use block becomes one OpenAI tool call (its index counts tool blocks only): a chunk with its id and
    name, then one chunk per input_json_delta with the argument fragment."""

    def __init__(self, model: str, json_tool: str | None = None) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.json_tool = json_tool
        self.usage: dict = {}
        self.blocks: dict[int, tuple[str, int]] = {}  # Anthropic block index -> (kind, OpenAI tool index)
        self.tools = 0

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def feed(self, event: dict) -> list[dict]:
        kind = event.get("type")
        if kind == "message_start":
            self.usage = dict((event.get("message") or {}).get("usage") or {})
            chunk = self._chunk({"role": "assistant", "content": ""})
            chunk[START_USAGE] = usage_to_openai(self.usage)
            return [chunk]
        if kind == "content_block_start":
            return self._block_start(event.get("index", 0), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(event.get("index", 0), event.get("delta") or {})
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            d = event.get("delta") or {}
            finish, matched = _finish(d.get("stop_reason"), d.get("stop_sequence"), self.json_tool)
            last = self._chunk({}, finish)
            if matched is not None:
                last["choices"][0]["stop_reason"] = matched
            usage_chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "choices": [], "usage": usage_to_openai(self.usage)}
            return [last, usage_chunk]
        return []

    def _block_start(self, index: int, block: dict) -> list[dict]:
        kind = block.get("type")
        if kind == "tool_use" and not (self.json_tool is not None and block.get("name") == self.json_tool):
            k = self.tools
            self.tools += 1
            self.blocks[index] = ("tool", k)
            call = {"index": k, "id": block.get("id", ""), "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        self.blocks[index] = ("json" if kind == "tool_use" else kind or "text", -1)
        if kind == "redacted_thinking":  # opaque: carried whole, for an Anthropic client's next turn
            return [self._chunk({"thinking_blocks": [block]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _delta(self, index: int, delta: dict) -> list[dict]:
        kind, k = self.blocks.get(index, ("text", -1))
        dtype = delta.get("type")
        if dtype == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if dtype == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if dtype == "signature_delta" and delta.get("signature"):
            return [self._chunk({"thinking_signature": delta["signature"]})]  # ours: OpenAI has no field
        if dtype == "input_json_delta" and delta.get("partial_json"):
            if kind == "json":
                return [self._chunk({"content": delta["partial_json"]})]
            return [self._chunk({"tool_calls": [{"index": k, "function": {"arguments": delta["partial_json"]}}]})]
        return []
