"""OpenAI chat <-> Anthropic Messages, both directions, streaming included.

Inside the gateway every request is an OpenAI chat request and every result OpenAI chat chunks/objects;
Anthropic ingress is translated on the way in and out, Anthropic egress on the way to and from the provider.
Text content only: other block types are refused with a clear 400 rather than silently dropped.
"""

from __future__ import annotations

import time
import uuid

import orjson

from autarky.contracts import wire
from autarky.gateway.errors import bad_request

_STOP_TO_OPENAI = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                   "refusal": "content_filter", "pause_turn": "stop"}
_STOP_TO_ANTHROPIC = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                      "content_filter": "refusal", None: "end_turn"}


def _text_of(content: object, where: str) -> str:
    """Join text blocks; refuse anything that is not text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or a list of text blocks", param=where)
    parts = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise bad_request(f"{where}: unsupported content block {kind!r}; the gateway carries text only",
                              param=where)
        parts.append(block["text"])
    return "".join(parts)


# ---- Anthropic ingress ------------------------------------------------------------------------------------

def anthropic_request_to_openai(body: dict) -> dict:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: a non-empty list is required", param="messages")
    if not isinstance(body.get("max_tokens"), int):
        raise bad_request("max_tokens: an integer is required", param="max_tokens")
    out: list[dict] = []
    if body.get("system"):
        out.append({"role": "system", "content": _text_of(body["system"], "system")})
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise bad_request(f"messages.{i}.role: must be 'user' or 'assistant'", param=f"messages.{i}.role")
        out.append({"role": m["role"], "content": _text_of(m.get("content"), f"messages.{i}.content")})
    req = {"model": body.get("model"), "messages": out, "max_tokens": body["max_tokens"],
           "stream": bool(body.get("stream", False))}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop")):
        if body.get(src) is not None:
            req[dst] = body[src]
    return req


def openai_response_to_anthropic(resp: dict, model: str) -> dict:
    choice = (resp.get("choices") or [{}])[0]
    usage = resp.get("usage") or {}
    text = (choice.get("message") or {}).get("content") or ""
    return {
        "id": "msg_" + str(resp.get("id", uuid.uuid4().hex)).removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": _STOP_TO_ANTHROPIC.get(choice.get("finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)},
    }


def _event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class OpenAIToAnthropicStream:
    """Feeds OpenAI chat chunks, yields Anthropic SSE events (message_start … message_stop)."""

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self.model = model
        self.started = False
        self.stop_reason = "end_turn"
        self.output_tokens = 0
        self.input_tokens = input_tokens

    def _start(self) -> bytes:
        self.started = True
        msg = {"id": "msg_" + uuid.uuid4().hex, "type": "message", "role": "assistant", "model": self.model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
        return (_event("message_start", {"type": "message_start", "message": msg})
                + _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}}))

    def feed(self, chunk: dict) -> bytes:
        out = b"" if self.started else self._start()
        if chunk.get("usage"):
            self.output_tokens = chunk["usage"].get("completion_tokens", self.output_tokens)
            self.input_tokens = chunk["usage"].get("prompt_tokens", self.input_tokens)
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                out += _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "text_delta", "text": text}})
            if choice.get("finish_reason"):
                self.stop_reason = _STOP_TO_ANTHROPIC.get(choice["finish_reason"], "end_turn")
        return out

    def finish(self) -> bytes:
        out = b"" if self.started else self._start()
        return (out + _event("content_block_stop", {"type": "content_block_stop", "index": 0})
                + _event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                           "usage": {"input_tokens": self.input_tokens,
                                                     "output_tokens": self.output_tokens}})
                + _event("message_stop", {"type": "message_stop"}))


# ---- Anthropic egress -------------------------------------------------------------------------------------

def openai_request_to_anthropic(body: dict, upstream_model: str, default_max_tokens: int) -> dict:
    system: list[str] = []
    messages: list[dict] = []
    for i, m in enumerate(body.get("messages") or ()):
        role = m.get("role")
        text = _text_of(m.get("content") or "", f"messages.{i}.content")
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            if messages and messages[-1]["role"] == role:  # Anthropic needs alternating turns
                messages[-1]["content"] += "\n\n" + text
            else:
                messages.append({"role": role, "content": text})
        else:
            raise bad_request(f"messages.{i}.role: {role!r} cannot be sent to an Anthropic provider",
                              param=f"messages.{i}.role")
    req: dict = {"model": upstream_model, "messages": messages,
                 "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens}
    if system:
        req["system"] = "\n\n".join(system)
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(src) is not None:
            req[dst] = body[src]
    stop = body.get("stop")
    if stop:
        req["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        req["stream"] = True
    return req


def anthropic_response_to_openai(resp: dict, model: str) -> dict:
    text = "".join(b.get("text", "") for b in resp.get("content") or () if b.get("type") == "text")
    usage = resp.get("usage") or {}
    p, c = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return {
        "id": "chatcmpl-" + str(resp.get("id", uuid.uuid4().hex)).removeprefix("msg_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": _STOP_TO_OPENAI.get(resp.get("stop_reason"), "stop")}],
        "usage": wire.usage(p, c),
    }


class AnthropicToOpenAIChunks:
    """Feeds Anthropic stream events, returns OpenAI chat chunks (role chunk, deltas, finish, usage)."""

    def __init__(self, model: str) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def feed(self, event: dict) -> list[dict]:
        kind = event.get("type")
        if kind == "message_start":
            self.prompt_tokens = ((event.get("message") or {}).get("usage") or {}).get("input_tokens", 0)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._chunk({"content": delta["text"]})]
            return []
        if kind == "message_delta":
            self.completion_tokens = (event.get("usage") or {}).get("output_tokens", self.completion_tokens)
            stop = (event.get("delta") or {}).get("stop_reason")
            usage_chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "choices": [],
                           "usage": wire.usage(self.prompt_tokens, self.completion_tokens)}
            return [self._chunk({}, _STOP_TO_OPENAI.get(stop, "stop")), usage_chunk]
        return []
