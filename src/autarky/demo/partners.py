"""The partner simulator: a small real server that stands in for paid partner APIs (OpenAI and Anthropic wire
formats) and misbehaves on demand, for drills, the gateway's tests and its benchmark. It generates no text of
value. It lives with the demo, not in the gateway: the gateway never needs it to run.

Faults are scripted per model (`faults.script("m", "500", "429:1", "ok")`) or set as a default
(`faults.default["m"] = "latency:0.05"`):
  ok | latency:S | 500 | 503 | 429:S (Retry-After S) | 400 | 404 | reset (drop the connection mid-body) |
  malformed (invalid JSON) | stall:S (stream: first chunk, then silence for S) | die:N (stream: N chunks then
  drop the connection) | inband (stream: an in-band error event after one chunk) | length (the answer ends as
  cut by max_tokens) | filter (the answer ends as refused)
It speaks tools and JSON output in both formats (partner_tools: deterministic calls built from the request's
schemas), honours stop sequences (the reply's words are w0 w1 …), reports cached prompt tokens (Anthropic: when
the request has cache_control; OpenAI: when it has prompt_cache_key), usage on every chunk when asked
(stream_options.continuous_usage_stats) and answers /v1/messages/count_tokens. `Faults.bodies` records every
request body received, for tests that assert what reached the upstream.
`Faults(chaos=0.2, seed=5)` also picks a random fault from CHAOS for that share of unscripted requests.
Run it standalone with `python -m autarky.demo.partners --port 9000 [--chaos 0.2] [--seed 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
import uuid
from collections import defaultdict, deque

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from autarky.contracts import wire
from autarky.demo.partner_tools import (
    anthropic_calls,
    fragments,
    has_cache_control,
    json_text,
    openai_calls,
)

CHAOS = ("500", "503", "reset", "429:0", "malformed", "die:2", "inband", "latency:0.02")


class Faults:
    def __init__(self, chaos: float = 0.0, seed: int = 0) -> None:
        self.chaos = chaos
        self.rng = random.Random(seed)
        self.scripts: dict[str, deque[str]] = defaultdict(deque)
        self.default: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []  # (path, model) in arrival order
        # (path, body) in arrival order; the latest 1000 only, so long drills and benchmarks stay small
        self.bodies: deque[tuple[str, dict]] = deque(maxlen=1000)
        self.lock = threading.Lock()

    def script(self, model: str, *faults: str) -> None:
        with self.lock:
            self.scripts[model].extend(faults)

    def next(self, path: str, model: str, body: dict | None = None) -> str:
        with self.lock:
            self.calls.append((path, model))
            if body is not None:
                self.bodies.append((path, body))
            queue = self.scripts.get(model)
            if queue:
                return queue.popleft()
            if self.chaos and self.rng.random() < self.chaos:
                return self.rng.choice(CHAOS)
            return self.default.get(model, self.default.get("*", "ok"))

    def reset(self) -> None:
        with self.lock:
            self.scripts.clear()
            self.default.clear()
            self.calls.clear()
            self.bodies.clear()


class _Drop(Exception):
    """Raised mid-response so the server closes the connection without finishing the body."""


def _words(value: object) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v.get("content") if isinstance(v, dict) and "content" in v else
                          v.get("text") if isinstance(v, dict) else v) for v in value)
    return 0


def _until_stop(words: list[str], stop: object) -> tuple[list[str], str | None]:
    """The reply cut before the first word that is a stop sequence, and that sequence."""
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    for i, w in enumerate(words):
        if w in stops:
            return words[:i], w
    return words, None


def _reply(model: str, n: int) -> list[str]:
    return [f"w{i}" for i in range(max(1, n - 2))] + ["from", model] if n > 2 else ["reply", model][:n or 1]


def _json(data: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, headers: dict | None = None) -> Response:
    return _json(wire.error_envelope(f"injected {status}", "server_error"), status, headers)


async def _prelude(fault: str) -> Response | None:
    """Apply faults that act before a normal answer; a Response means answer with it instead."""
    kind, _, arg = fault.partition(":")
    if kind == "latency":
        await asyncio.sleep(float(arg))
    elif kind in ("500", "503", "400", "404", "502"):
        return _error(int(kind))
    elif kind == "429":
        return _error(429, {"retry-after": arg or "1"})
    elif kind == "malformed":
        return Response(b'{"choices": [', media_type="application/json")
    return None


class _DroppingResponse(Response):
    """Starts a response that promises more bytes than it sends, then drops the connection."""

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b'{"id": "x", ', "more_body": True})
        raise _Drop("connection dropped on purpose")


def make_app(faults: Faults | None = None, max_words: int = 8) -> Starlette:
    faults = faults or Faults()

    async def openai(request: Request) -> Response:
        body = orjson.loads(await request.body())
        model = body.get("model", "")
        chat = request.url.path.endswith("/chat/completions")
        fault = faults.next(request.url.path, model, body)
        if fault == "reset":
            return _DroppingResponse()
        early = await _prelude(fault)
        if early is not None:
            return early
        prompt_tokens = _words(body.get("messages") if chat else body.get("prompt"))
        words, matched = _until_stop(_reply(model, min(max_words, int(body.get("max_tokens") or max_words))),
                                     body.get("stop"))
        calls = openai_calls(body) if chat else []
        fixed = json_text(body) if chat and not calls else None
        finish = {"length": "length", "filter": "content_filter"}.get(fault, "tool_calls" if calls else "stop")
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        completion_tokens = len(words) + sum(len(c["function"]["arguments"]) // 4 + 1 for c in calls)
        usage = wire.usage(prompt_tokens, completion_tokens)
        if body.get("prompt_cache_key"):
            usage["prompt_tokens_details"] = {"cached_tokens": min(2, prompt_tokens)}
        if not body.get("stream"):
            if fault.startswith("stall"):
                await asyncio.sleep(float(fault.partition(":")[2] or 30))
            text = fixed if fixed is not None else " ".join(words)
            message: dict = {"role": "assistant", "content": None if calls else text}
            if calls:
                message["tool_calls"] = calls
            choice = ({"index": 0, "message": message, "logprobs": None, "finish_reason": finish} if chat else
                      {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
            if matched is not None:
                choice["stop_reason"] = matched  # vLLM names the stop string that ended a choice
            return _json({"id": cid, "object": "chat.completion" if chat else "text_completion",
                          "created": int(time.time()), "model": model, "choices": [choice], "usage": usage})
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        continuous = bool(options.get("continuous_usage_stats"))
        obj = "chat.completion.chunk" if chat else "text_completion"
        sent = [0]

        def chunk(delta: dict | str, finish: str | None = None) -> bytes:
            choice = ({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish} if chat else
                      {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish})
            if finish and matched is not None:
                choice["stop_reason"] = matched
            data = {"id": cid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
            if continuous:
                data["usage"] = wire.usage(prompt_tokens, sent[0])
            sent[0] += 1
            return b"data: " + orjson.dumps(data) + b"\n\n"

        async def events():  # noqa: ANN202
            if chat:
                yield chunk({"role": "assistant", "content": ""})
            for k, call in enumerate(calls):
                head = {"index": k, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                yield chunk({"tool_calls": [head]})
                for piece in fragments(call["function"]["arguments"]):
                    yield chunk({"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
            pieces = [] if calls else fragments(fixed) if fixed is not None else \
                [(" " if i else "") + w for i, w in enumerate(words)]
            for i, piece in enumerate(pieces):
                if fault.startswith("die") and i == int(fault.partition(":")[2] or 1):
                    raise _Drop("stream dropped on purpose")
                if fault == "inband" and i == 1:
                    yield b'data: {"error": {"message": "injected in-band", "type": "server_error"}}\n\n'
                    yield b"data: [DONE]\n\n"
                    return
                yield chunk({"content": piece} if chat else piece)
                if fault.startswith("stall") and i == 0:
                    await asyncio.sleep(float(fault.partition(":")[2] or 30))
            yield chunk({} if chat else "", finish)
            if include_usage:
                data = {"id": cid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
                        "usage": usage}
                yield b"data: " + orjson.dumps(data) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def anthropic_usage(body: dict) -> dict:
        prompt_tokens = _words(body.get("messages")) + _words(body.get("system") or "")
        if has_cache_control(body):
            cached = min(2, prompt_tokens)
            return {"input_tokens": prompt_tokens - cached, "cache_read_input_tokens": cached,
                    "cache_creation_input_tokens": 0}
        return {"input_tokens": prompt_tokens}

    async def count_tokens(request: Request) -> Response:
        body = orjson.loads(await request.body())
        faults.next(request.url.path, body.get("model", ""), body)
        u = anthropic_usage(body)
        return _json({"input_tokens": sum(u.values())})

    async def anthropic(request: Request) -> Response:
        body = orjson.loads(await request.body())
        model = body.get("model", "")
        fault = faults.next(request.url.path, model, body)
        if fault == "reset":
            return _DroppingResponse()
        early = await _prelude(fault)
        if early is not None:
            if early.status_code >= 400:
                kind = "rate_limit_error" if early.status_code == 429 else "api_error"
                return _json({"type": "error", "error": {"type": kind, "message": f"injected {early.status_code}"}},
                             early.status_code, dict(early.headers) if early.status_code == 429 else None)
            return early
        usage = anthropic_usage(body)
        words, matched = _until_stop(_reply(model, min(max_words, int(body.get("max_tokens") or max_words))),
                                     body.get("stop_sequences"))
        calls = anthropic_calls(body)
        stop = {"length": "max_tokens", "filter": "refusal"}.get(
            fault, "tool_use" if calls else "stop_sequence" if matched else "end_turn")
        output_tokens = len(words) + sum(len(orjson.dumps(c["input"])) // 4 + 1 for c in calls)
        mid = "msg_" + uuid.uuid4().hex[:16]
        if not body.get("stream"):
            content = calls or [{"type": "text", "text": " ".join(words)}]
            return _json({"id": mid, "type": "message", "role": "assistant", "model": model,
                          "content": content, "stop_reason": stop, "stop_sequence": matched,
                          "usage": {**usage, "output_tokens": output_tokens}})

        def event(name: str, data: dict) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        async def events():  # noqa: ANN202
            yield event("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}})
            for k, call in enumerate(calls):
                yield event("content_block_start", {"type": "content_block_start", "index": k,
                                                    "content_block": {**call, "input": {}}})
                for piece in fragments(orjson.dumps(call["input"]).decode()):
                    yield event("content_block_delta", {"type": "content_block_delta", "index": k,
                                                        "delta": {"type": "input_json_delta", "partial_json": piece}})
                yield event("content_block_stop", {"type": "content_block_stop", "index": k})
            if not calls:
                yield event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})
            for i, w in enumerate([] if calls else words):
                if fault.startswith("die") and i == int(fault.partition(":")[2] or 1):
                    raise _Drop("stream dropped on purpose")
                if fault == "inband" and i == 1:
                    yield event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                     "message": "injected in-band"}})
                    return
                yield event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": (" " if i else "") + w}})
                if fault.startswith("stall") and i == 0:
                    await asyncio.sleep(float(fault.partition(":")[2] or 30))
            if not calls:
                yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop,
                                                                             "stop_sequence": matched},
                                          "usage": {"output_tokens": output_tokens}})
            yield event("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": []})

    app = Starlette(routes=[
        Route("/v1/chat/completions", openai, methods=["POST"]),
        Route("/v1/completions", openai, methods=["POST"]),
        Route("/v1/messages", anthropic, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ])
    app.state.faults = faults
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="the partner simulator: a misbehaving OpenAI/Anthropic-compatible upstream")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chaos", type=float, default=0.0, help="share of requests that get a random fault")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = parser.parse_args()
    faults = Faults(args.chaos, args.seed)
    if args.latency:
        faults.default["*"] = f"latency:{args.latency}"
    uvicorn.run(make_app(faults), host="127.0.0.1", port=args.port, log_level="critical", access_log=False,
                loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
