"""What a request body must pass before any route parses it: a size limit (checked on the declared length and
again on the bytes as they arrive, so a chunked or lying client is cut off too), and JSON as the default type."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from autarky.contracts.wire import error_envelope
from autarky.serve.errors import InvalidRequest
from autarky.serve.registry import ServedModel

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class Intake:
    """ASGI middleware: a body over `max_bytes` is a 413 envelope; a POST without a content-type is read as JSON
    (OpenAI clients always send JSON; without this FastAPI answers a baffling 'valid dictionary' error)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and b"content-type" not in headers:
            scope["headers"] = [*scope["headers"], (b"content-type", b"application/json")]
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # whatever the app made of the cut-off body, the client hears why
                if not started:
                    started = True
                    await self._refuse(send)
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        limit = f"{self.max_bytes / 2**20:g} MB"
        body = json.dumps(error_envelope(f"the request body is larger than this server accepts ({limit})",
                                         "invalid_request_error", None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def encode_text(served: ServedModel, text: str, param: str, **kwargs) -> list[int]:
    """`text` as token ids; a lone surrogate is a 400 naming `param`, not a tokenizer crash."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (valid JSON, not valid text)
        raise InvalidRequest(f"the text is not valid Unicode: {exc.reason} at {exc.start}", param=param) from None
    return served.codec.encode(text, **kwargs)


def check_ids(served: ServedModel, ids: list[int], param: str) -> list[int]:
    """`ids`, once each is inside the vocabulary (negative and 64-bit-overflowing ids are a 400, not a 500)."""
    vocab = served.engine.model.config.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param=param)
    return ids

