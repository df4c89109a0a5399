"""Turning engine events into OpenAI response objects and SSE chunks (completions and chat shapes)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import orjson

from autarky.contracts import wire
from autarky.serve.events import PromptEvent, TokenEvent, TopLogprobs
from autarky.serve.text import TextCodec
from autarky.serve.tools import ToolUse, parse_output


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")


@dataclass
class Choice:
    """Everything one choice has produced so far."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[TopLogprobs | None] = field(default_factory=list)
    finish_reason: str | None = None
    prompt: PromptEvent | None = None


@dataclass
class Envelope:
    """The fields every response and chunk of one request shares."""

    kind: str  # "cmpl" or "chatcmpl"
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = f"{self.kind}-{uuid.uuid4().hex}"

    def head(self, object_: str) -> dict:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, choices: list[Choice]) -> dict:
    return wire.usage(prompt_tokens, sum(len(c.token_ids) for c in choices))


def apply_event(choices: dict[int, Choice], event: TokenEvent | PromptEvent) -> None:
    if isinstance(event, PromptEvent):
        for i in range(event.index, event.index + event.count):
            choices[i].prompt = event
        return
    c = choices[event.index]
    if event.finish_reason:
        c.finish_reason = event.finish_reason
        return
    c.text += event.text
    c.token_ids.append(event.token_id)  # type: ignore[arg-type]
    c.logprobs.append(event.logprob)
    c.top_logprobs.append(event.top_logprobs)


# ---- completions (legacy logprobs shape) --------------------------------------------------------------------


def legacy_logprobs(codec: TextCodec, ids: list[int], lps: list[float | None], tops: list[TopLogprobs | None],
                    offset: int = 0) -> dict:
    tokens = [codec.token_text(t) for t in ids]
    top_dicts: list[dict | None] = []
    for t, lp, top in zip(ids, lps, tops, strict=True):
        if lp is None:
            top_dicts.append(None)
            continue
        d = {codec.token_text(i): v for i, v in (top or [])}
        d.setdefault(codec.token_text(t), lp)  # vLLM includes the chosen token
        top_dicts.append(d)
    offsets, pos = [], offset
    for tok in tokens:
        offsets.append(pos)
        pos += len(tok)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top_dicts, "text_offset": offsets}


def completion_choice(codec: TextCodec, c: Choice, echo_text: str | None, want_logprobs: bool) -> dict:
    text = (echo_text or "") + c.text
    logprobs = None
    if want_logprobs:
        ids, lps, tops = list(c.token_ids), list(c.logprobs), list(c.top_logprobs)
        if echo_text is not None and c.prompt is not None:
            ids = c.prompt.token_ids + ids
            lps = c.prompt.logprobs + lps
            tops = c.prompt.top_logprobs + tops
        logprobs = legacy_logprobs(codec, ids, lps, tops)
    return {"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason}


def completion_chunk(env: Envelope, index: int, text: str, logprobs: dict | None, finish: str | None,
                     include_usage: bool) -> dict:
    chunk = env.head("text_completion")
    chunk["choices"] = [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]
    if include_usage:
        chunk["usage"] = None
    return chunk


# ---- chat ---------------------------------------------------------------------------------------------------


def _chat_entry(codec: TextCodec, token_id: int, lp: float) -> dict:
    text = codec.token_text(token_id)
    return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(codec: TextCodec, ids: list[int], lps: list, tops: list) -> dict:
    content = []
    for t, lp, top in zip(ids, lps, tops, strict=True):
        entry = _chat_entry(codec, t, lp)
        entry["top_logprobs"] = [_chat_entry(codec, i, v) for i, v in (top or [])]
        content.append(entry)
    return {"content": content}


def chat_choice(codec: TextCodec, c: Choice, want_logprobs: bool, tools: ToolUse | None = None) -> dict:
    logprobs = chat_logprobs(codec, c.token_ids, c.logprobs, c.top_logprobs) if want_logprobs else None
    message: dict = {"role": "assistant", "content": c.text}
    finish = c.finish_reason
    if tools is not None:
        message["content"], calls = parse_output(c.text, tools, truncated=finish == "length")
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls" if finish == "stop" else finish
    return {"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def chat_chunk(env: Envelope, index: int, delta: dict, logprobs: dict | None, finish: str | None,
               include_usage: bool) -> dict:
    chunk = env.head("chat.completion.chunk")
    chunk["choices"] = [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
    if include_usage:
        chunk["usage"] = None
    return chunk
