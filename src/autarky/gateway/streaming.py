"""Streaming responses: re-emit upstream chunks as OpenAI SSE or Anthropic events, count usage, and turn a
failure after the first byte into an in-band error (status stays 200) followed by the stream's end marker.

Accounting happens when the response finishes however it ends (done, upstream error, client gone), so a
ledger row is written and the key's reservation settled for every stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from autarky.gateway.errors import inband_anthropic, inband_openai, upstream_failed
from autarky.gateway.providers import UpstreamError
from autarky.gateway.translate import OpenAIToAnthropicStream

if TYPE_CHECKING:
    from autarky.gateway.app import Gateway
    from autarky.gateway.auth import Admission, KeyRecord
    from autarky.gateway.dispatch import Outcome
    from autarky.gateway.ledger import Usage
    from autarky.gateway.router import Plan


class AccountedStream(StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes], on_close, headers: dict[str, str]) -> None:  # noqa: ANN001
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[union-attr]
            await self.on_close()


def stream_response(
    gw: Gateway, request: Request, plan: Plan, outcome: Outcome, body: dict, first: list[dict],
    rest: AsyncIterator[list[dict]], usage: Usage, key: KeyRecord, admission: Admission, started: float,
    anthropic: bool, store_content: bool,
) -> AccountedStream:
    from autarky.gateway.app import route_headers

    target = outcome.target
    usage.stream = True
    usage.status = 200
    include_usage = not anthropic and bool((body.get("stream_options") or {}).get("include_usage"))
    state = {"done": False, "deltas": 0, "text": []}

    async def events() -> AsyncIterator[bytes]:
        translator = OpenAIToAnthropicStream(target.model) if anthropic else None
        try:
            batch: list[dict] | None = first
            while batch is not None:
                out: list[bytes] = []  # one write per upstream read, however many chunks it held
                for chunk in batch:
                    u = chunk.get("usage")
                    if u:
                        usage.prompt_tokens = int(u.get("prompt_tokens") or 0)
                        usage.completion_tokens = int(u.get("completion_tokens") or 0)
                    choices = chunk.get("choices")
                    for c in choices or ():
                        piece = (c.get("delta") or {}).get("content") or c.get("text")
                        if piece:
                            state["deltas"] += 1
                            if store_content:
                                state["text"].append(piece)
                    if translator is not None:
                        out.append(translator.feed(chunk))
                    elif choices or include_usage:  # drop the usage-only chunk the client did not ask for
                        if not include_usage:
                            chunk.pop("usage", None)
                        chunk["model"] = target.model
                        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
                data = b"".join(out)
                if data:
                    yield data
                batch = await anext(rest, None)
            state["done"] = True
            yield translator.finish() if translator is not None else b"data: [DONE]\n\n"
        except UpstreamError as err:
            gw.breakers[target.provider].failure()
            usage.status, usage.error = 502, err.message
            failure = upstream_failed(f"upstream failed mid-stream: {err.message}")
            yield inband_anthropic(failure) if anthropic else inband_openai(failure)
        finally:
            await rest.aclose()

    async def on_close() -> None:
        await rest.aclose()  # also when events() never started (client gone before the first byte)
        if usage.status == 200 and not state["done"]:
            usage.status, usage.error = 499, "client disconnected mid-stream"
        if not usage.completion_tokens:
            usage.completion_tokens = state["deltas"]  # upstream sent no usage: one token per delta
        if store_content:
            usage.content = orjson.dumps({"request": body, "response": "".join(state["text"])}).decode()
        gw.settle(usage, key, admission, target, outcome)
        gw.finish(usage, started)

    headers = route_headers(plan, outcome, usage.request_id)
    headers["cache-control"] = "no-cache"
    return AccountedStream(events(), on_close, headers)
