"""Streaming responses: re-emit upstream chunks as OpenAI SSE or Anthropic events, count usage, and turn a
failure after the first byte into an in-band error (status stays 200) followed by the stream's end marker.

When the response ends, however it ends (done, upstream error, client gone), the stream settles what it used
on the request's exchange; the exchange's owner then writes its one ledger row."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from autarky.gateway.breaker import Breaker
from autarky.gateway.errors import inband_anthropic, inband_openai, upstream_failed
from autarky.gateway.exchange import Exchange
from autarky.gateway.providers import UpstreamError
from autarky.gateway.translate import START_USAGE, OpenAIToAnthropicStream


class ExchangeStream(StreamingResponse):
    """An SSE response that settles its exchange when it ends, also when the client left before the first byte."""

    def __init__(self, exchange: Exchange, body: dict, first: list[dict], rest: AsyncIterator[list[dict]],
                 breaker: Breaker, anthropic: bool) -> None:
        self.exchange = exchange
        self.request_body = body
        self.first = first
        self.rest = rest
        self.breaker = breaker
        self.anthropic = anthropic
        self.done = False
        self.failed = False
        self.deltas = 0
        self.text: list[str] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        exchange.streaming()
        headers = exchange.headers()
        headers["cache-control"] = "no-cache"
        super().__init__(self._events(), media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[union-attr]
            await self.rest.aclose()  # also when _events() never started (client gone before the first byte)
            self._settle()

    def _settle(self) -> None:
        ex = self.exchange
        # The provider's verdict: only a stream that reached its end counts as a success, so streams that die
        # after the first chunk open the breaker; a client that left says nothing about the provider.
        if self.done:
            self.breaker.success()
        elif not self.failed:
            self.breaker.release()
        if not self.done:
            ex.fail(499, "client disconnected mid-stream")  # a no-op after an upstream failure
        if ex.store_content:
            ex.usage.content = orjson.dumps({"request": self.request_body, "response": "".join(self.text)}).decode()
        # Upstream sent no usage: one token per delta.
        ex.settle(self.prompt_tokens, self.completion_tokens or self.deltas)

    async def _events(self) -> AsyncIterator[bytes]:
        ex = self.exchange
        target = ex.outcome.target
        assert target is not None
        include_usage = not self.anthropic and bool((self.request_body.get("stream_options") or {})
                                                    .get("include_usage"))
        translator = OpenAIToAnthropicStream(target.model) if self.anthropic else None
        try:
            batch: list[dict] | None = self.first
            while batch is not None:
                out: list[bytes] = []  # one write per upstream read, however many chunks it held
                for chunk in batch:
                    u = chunk.get("usage") or chunk.get(START_USAGE)
                    if u:
                        self.prompt_tokens = int(u.get("prompt_tokens") or 0)
                        self.completion_tokens = int(u.get("completion_tokens") or 0)
                    choices = chunk.get("choices")
                    for c in choices or ():
                        delta = c.get("delta") or {}
                        piece = delta.get("content") or c.get("text")
                        if piece or delta.get("tool_calls"):
                            self.deltas += 1
                            if ex.store_content and piece:
                                self.text.append(piece)
                    if translator is not None:
                        out.append(translator.feed(chunk))
                        continue
                    chunk.pop(START_USAGE, None)
                    if choices or include_usage:  # drop the usage-only chunk the client did not ask for
                        if not include_usage:
                            chunk.pop("usage", None)
                        chunk["model"] = target.model
                        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
                data = b"".join(out)
                if data:
                    yield data
                batch = await anext(self.rest, None)
            self.done = True
            yield translator.finish() if translator is not None else b"data: [DONE]\n\n"
        except UpstreamError as err:
            self.failed = True
            self.breaker.failure()
            ex.fail(502, err.message)
            failure = upstream_failed(f"upstream failed mid-stream: {err.message}")
            yield inband_anthropic(failure) if self.anthropic else inband_openai(failure)
        finally:
            await self.rest.aclose()
