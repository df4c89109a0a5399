"""Anthropic ingress: a Messages request in, the internal OpenAI chat request; OpenAI results out as Anthropic."""

from __future__ import annotations

import uuid

import orjson

from autarky.gateway.errors import GatewayError, bad_request
from autarky.gateway.translate.blocks import (
    START_USAGE,
    STOP_TO_ANTHROPIC,
    block_to_part,
    blocks_to_content,
    plain,
    tool_choice_to_openai,
    tool_to_openai,
    tool_use_to_call,
    usage_to_anthropic,
)


def _system(system: object) -> str | list[dict]:
    if isinstance(system, str):
        return system
    return blocks_to_content(system, "system")


def _user(content: object, where: str) -> list[dict]:
    """One Anthropic user turn → OpenAI messages: each tool_result its own `tool` message (first, as OpenAI
    wants them right after the assistant's calls), then what else the turn said as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or a list of blocks", param=where)
    tools: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            tools.append(_tool_result(block, f"{where}.{j}"))
        else:
            parts.append(block_to_part(block, f"{where}.{j}"))
    out = tools
    if parts or not tools:
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if plain(parts) else parts})
    return out


def _tool_result(block: dict, where: str) -> dict:
    if not isinstance(block.get("tool_use_id"), str):
        raise bad_request(f"{where}.tool_use_id: required", param=f"{where}.tool_use_id")
    content = block.get("content")
    msg: dict = {"role": "tool", "tool_call_id": block["tool_use_id"],
                 "content": "" if content is None else blocks_to_content(content, f"{where}.content")}
    if block.get("is_error") is not None:
        msg["is_error"] = bool(block["is_error"])
    if block.get("cache_control") is not None:
        msg["cache_control"] = block["cache_control"]
    return msg


def _assistant(content: object, where: str) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or a list of blocks", param=where)
    parts: list[dict] = []
    calls: list[dict] = []
    thinking: list[dict] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
                raise bad_request(f"{where}.{j}: tool_use needs a name and an object input", param=f"{where}.{j}")
            calls.append(tool_use_to_call(block))
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(block)
        else:
            parts.append(block_to_part(block, f"{where}.{j}"))
    msg: dict = {"role": "assistant",
                 "content": ("".join(p["text"] for p in parts) if plain(parts) else parts) if parts else None}
    if calls:
        msg["tool_calls"] = calls
    elif msg["content"] is None:
        msg["content"] = ""
    if thinking:
        msg["thinking_blocks"] = thinking
    return msg


# The Messages fields the internal form has a place for; any other rides along in `anthropic_extra`.
_KNOWN = frozenset(("model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p",
                    "top_k", "tools", "tool_choice", "thinking", "metadata"))


def anthropic_request_to_openai(body: dict) -> dict:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: a non-empty list is required", param="messages")
    if not isinstance(body.get("max_tokens"), int):
        raise bad_request("max_tokens: an integer is required", param="max_tokens")
    out: list[dict] = []
    if body.get("system"):
        out.append({"role": "system", "content": _system(body["system"])})
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise bad_request(f"messages.{i}.role: must be 'user' or 'assistant'", param=f"messages.{i}.role")
        where = f"messages.{i}.content"
        if m["role"] == "user":
            out.extend(_user(m.get("content"), where))
        else:
            out.append(_assistant(m.get("content"), where))
    req: dict = {"model": body.get("model"), "messages": out, "max_tokens": body["max_tokens"],
                 "stream": bool(body.get("stream", False))}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop"),
                     ("top_k", "top_k"), ("thinking", "thinking")):
        if body.get(src) is not None:
            req[dst] = body[src]
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_request("tools: must be a list", param="tools")
        req["tools"] = [tool_to_openai(t, f"tools.{i}") for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        req["tool_choice"] = tool_choice_to_openai(choice)
        if choice.get("disable_parallel_tool_use"):
            req["parallel_tool_calls"] = False
    extra = {k: v for k, v in body.items() if k not in _KNOWN and v is not None}
    if extra:
        req["anthropic_extra"] = extra  # carried verbatim to Anthropic upstreams; the router keeps them there
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if user:
        req["user"] = user
    return req


# ---- results ----------------------------------------------------------------------------------------------

def _stop(choice: dict) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). vLLM names the stop string that ended a choice in `stop_reason`."""
    matched = choice.get("stop_reason")
    if choice.get("finish_reason") == "stop" and isinstance(matched, str):
        return "stop_sequence", matched
    return STOP_TO_ANTHROPIC.get(choice.get("finish_reason"), "end_turn"), None


def _thinking_blocks(message: dict) -> list[dict]:
    if message.get("thinking_blocks"):
        return list(message["thinking_blocks"])
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return [{"type": "thinking", "thinking": reasoning, "signature": ""}] if reasoning else []


def openai_response_to_anthropic(resp: dict, model: str) -> dict:
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = _thinking_blocks(message)
    text = message.get("content") or ""
    calls = message.get("tool_calls") or []
    if text or not calls:
        content.append({"type": "text", "text": text})
    for k, call in enumerate(calls):
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            # Never a silent {}: the call is unusable without its arguments (LiteLLM #27469).
            raise GatewayError(502, f"the upstream's tool call {k} has arguments that are not a JSON object",
                               type="api_error", code="upstream_invalid")
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                        "name": fn.get("name", ""), "input": args})
    stop, sequence = _stop(choice)
    return {
        "id": "msg_" + str(resp.get("id", uuid.uuid4().hex)).removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": sequence,
        "usage": usage_to_anthropic(resp.get("usage") or {}),
    }


def _event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class OpenAIToAnthropicStream:
    """Feeds OpenAI chat chunks, yields Anthropic SSE events (message_start … message_stop).

    Each run of text, reasoning, or one tool call's argument fragments becomes its own content block, opened
    when it starts and closed when the next starts. message_start carries the input count when the first chunk
    knows it (an Anthropic upstream's message_start, or an OpenAI upstream's continuous usage)."""

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self.model = model
        self.started = False
        self.stop_reason = "end_turn"
        self.stop_sequence: str | None = None
        self.usage: dict = {"prompt_tokens": input_tokens}
        self.index = -1
        self.open: tuple[str, int] | None = None  # ("text" | "thinking" | "tool", OpenAI tool index)
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool index -> Anthropic block index

    def _start(self, chunk: dict | None) -> bytes:
        self.started = True
        if chunk is not None and (chunk.get(START_USAGE) or chunk.get("usage")):
            self.usage = chunk.get(START_USAGE) or chunk["usage"]
        msg = {"id": "msg_" + uuid.uuid4().hex, "type": "message", "role": "assistant", "model": self.model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {**usage_to_anthropic(self.usage), "output_tokens": 0}}
        return _event("message_start", {"type": "message_start", "message": msg})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _begin(self, kind: tuple[str, int], block: dict) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block})

    def _delta(self, delta: dict) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def feed(self, chunk: dict) -> bytes:
        out = b"" if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                if self.open != ("thinking", -1):
                    out += self._begin(("thinking", -1), {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "thinking_delta", "thinking": reasoning})
            if delta.get("thinking_signature") and self.open == ("thinking", -1):
                out += self._delta({"type": "signature_delta", "signature": delta["thinking_signature"]})
            for block in delta.get("thinking_blocks") or ():
                out += self._begin(("redacted", self.index + 1), block) + self._close()
            if delta.get("content"):
                if self.open != ("text", -1):
                    out += self._begin(("text", -1), {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or ():
                k = call.get("index", 0)
                fn = call.get("function") or {}
                if k not in self.tool_blocks:
                    block = {"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                             "name": fn.get("name") or "", "input": {}}
                    out += self._begin(("tool", k), block)
                    self.tool_blocks[k] = self.index
                if fn.get("arguments"):
                    # by the call's own block: servers that interleave parallel calls' fragments lose nothing
                    out += _event("content_block_delta", {
                        "type": "content_block_delta", "index": self.tool_blocks[k],
                        "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}})
            if choice.get("finish_reason"):
                self.stop_reason, self.stop_sequence = _stop(choice)
        return out

    def finish(self) -> bytes:
        out = b"" if self.started else self._start(None)
        if self.index < 0:  # clients expect at least one block
            out += self._begin(("text", -1), {"type": "text", "text": ""})
        u = usage_to_anthropic(self.usage)
        return (out + self._close()
                + _event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": self.stop_reason,
                                                     "stop_sequence": self.stop_sequence},
                                           "usage": u})
                + _event("message_stop", {"type": "message_stop"}))
