"""Reading a request before anything trusts it: a bounded body read within a deadline, bounded names and keys,
and every field the gateway itself reads checked for its type, so malformed input is a 4xx, never a 500.

Bounds matter because client strings travel far: into the routing cache, the ledger, and error messages.
Errors name the field and its bound, never echo the value.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import ClientDisconnect, Request

from autarky.gateway.errors import GatewayError, bad_request
from autarky.gateway.translate import anthropic_request_to_openai

MAX_NAME_CHARS = 256  # model names and task names (the ledger's model column holds 256)
MAX_KEY_CHARS = 512  # API keys: ours are ~50 characters
MAX_STOP = 16  # stop sequences per request, each at most MAX_STOP_CHARS
MAX_STOP_CHARS = 1000


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"request body larger than {limit} bytes", code="request_too_large",
                        headers={"connection": "close"})


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most `limit` bytes, received within `timeout_s` (a slow sender is a 408 and the
    connection is closed, so a trickle of bytes cannot hold a connection open)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    parts: list[bytes] = []
    size = 0

    async def receive_all() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            parts.append(chunk)

    try:
        await asyncio.wait_for(receive_all(), timeout_s)
    except TimeoutError:
        raise GatewayError(408, f"request body not received within {timeout_s:g} s", code="request_timeout",
                           headers={"connection": "close"}) from None
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(parts)


def bearer_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The client's key from either header, or None; too long or not ASCII is no key we could have issued."""
    key = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else x_api_key
    if key and (len(key) > MAX_KEY_CHARS or not key.isascii()):
        raise GatewayError(401, "invalid API key (not one this gateway issued)", type="authentication_error",
                           code="invalid_api_key")
    return key


def check_name(value: str | None, what: str) -> None:
    if value is not None and len(value) > MAX_NAME_CHARS:
        raise bad_request(f"{what}: at most {MAX_NAME_CHARS} characters", param=what)


def parse_body(raw: bytes, endpoint: str, count_only: bool = False) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    if endpoint == "messages":
        model = body.get("model")
        if count_only:  # count_tokens bodies have no max_tokens
            body = {**body, "max_tokens": 1}
        check_messages(body.get("messages"))
        try:
            body = anthropic_request_to_openai(body)
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            raise bad_request(f"request body does not follow the Messages API ({type(exc).__name__})") from exc
        body["model"] = model
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("model: a model name or `task:NAME` is required", param="model")
    check_name(body["model"], "model")
    if endpoint == "completions":
        if body.get("prompt") is None:
            raise bad_request("prompt: required", param="prompt")
    else:
        check_messages(body.get("messages"))
    for field in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(field)
        if value is not None and (type(value) is not int or value < 1):
            raise bad_request(f"{field}: must be a positive integer", param=field)
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise bad_request("stream: must be true or false", param="stream")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise bad_request("stream_options: must be an object", param="stream_options")
    check_stop(body.get("stop"))
    return body


def check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: a non-empty list is required", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages.{i}: must be an object with a string `role`", param=f"messages.{i}")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"messages.{i}.content: must be a string or a list of parts",
                              param=f"messages.{i}.content")


def check_stop(stop: object) -> None:
    if stop is None or isinstance(stop, str) and len(stop) <= MAX_STOP_CHARS:
        return
    if (isinstance(stop, list) and len(stop) <= MAX_STOP
            and all(isinstance(s, str) and len(s) <= MAX_STOP_CHARS for s in stop)):
        return
    raise bad_request(f"stop: a string or a list of at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} "
                      "characters each", param="stop")
