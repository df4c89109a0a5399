"""A scripted OpenAI-compatible model server on 127.0.0.1 (real uvicorn, real HTTP, the real wire format):
answers from a lookup table, counts requests, and can be told to fail, so runner tests can prove resume,
retries and per-item failures. `Script.calls` answers chat requests with tool calls instead of text.
(End-to-end tests against `autarky serve` use `served_tiny_model`.)
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp


@dataclass
class Script:
    answer: Callable[[str], str] = lambda prompt: "I do not know"
    fail_after: int | None = None  # answer 503 once this many requests were served
    fail_first: int = 0  # answer 500 to the first N requests (retries should absorb them)
    delay_s: float = 0.0  # think this long before answering chat requests
    max_context: int | None = None  # characters (= tokens here): longer completions prompts get a 400 like vLLM's
    # request body → [(function name, arguments JSON text)] to answer with tool calls, or None to answer with text
    calls: Callable[[dict], list[tuple[str, str]] | None] | None = None
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _app(script: Script, model: str) -> FastAPI:
    app = FastAPI()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "server_error", "param": None, "code": None}},
                            status_code=status)

    def gate(body: dict) -> JSONResponse | None:
        with script.lock:
            script.requests.append(body)
            n = len(script.requests)
        if n <= script.fail_first:
            return error(500, "scripted failure")
        if script.fail_after is not None and n > script.fail_after:
            return error(503, "scripted outage")
        return None

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        if (failed := gate(body)) is not None:
            return failed
        prompt = body["messages"][-1]["content"]
        await asyncio.sleep(script.delay_s)
        text = script.answer(prompt)
        calls = script.calls(body) if script.calls is not None else None
        message: dict = {"role": "assistant", "content": text}
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
                for i, (name, arguments) in enumerate(calls)]}
        return JSONResponse({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                      "total_tokens": len(prompt.split()) + len(text.split())},
        })

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        if (failed := gate(body)) is not None:
            return failed
        prompt = body["prompt"]
        asked = len(prompt) + int(body.get("max_tokens") or 16)
        if script.max_context is not None and asked > script.max_context:
            return JSONResponse({"error": {
                "message": f"This model's maximum context length is {script.max_context} tokens; the request asks for "
                           f"{asked}. Shorten the prompt or lower max_tokens.",
                "type": "invalid_request_error", "param": "prompt", "code": "context_length_exceeded"}}, status_code=400)
        if body.get("echo"):
            # One "token" per character: logprob -0.5 each, the first null, then one generated token.
            tokens = list(prompt) + ["\n"]
            logprobs = {"tokens": tokens, "token_logprobs": [None] + [-0.5] * (len(tokens) - 1),
                        "top_logprobs": [None] + [{t: -0.5} for t in tokens[1:]],
                        "text_offset": list(range(len(tokens)))}
            text = prompt + "\n"
        else:
            text, logprobs = script.answer(prompt), None
        return JSONResponse({
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": logprobs}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1, "total_tokens": len(prompt) + 1},
        })

    return app


@dataclass
class StubServer:
    script: Script
    base_url: str
    model: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_app(app: ASGIApp) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Serve any ASGI app on a free 127.0.0.1 port in a thread; returns once it accepts requests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("stub server did not start")
        time.sleep(0.02)
    return server, thread, port


def start_stub(script: Script, model: str = "stub-model") -> StubServer:
    server, thread, port = serve_app(_app(script, model))
    return StubServer(script, f"http://127.0.0.1:{port}/v1", model, server, thread)
