"""Calls to any OpenAI-compatible endpoint (our server, the gateway, a partner) with httpx: retries with
backoff on transport errors, 429 and 5xx; other 4xx are final for that request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from autarky.contracts.wire import ContextOverflow
from autarky.errors import UserError
from autarky.evals.formats import ToolCall

Mode = Literal["chat", "completions"]


class EndpointError(Exception):
    """A request failed. `final` means retrying the same request will not help (e.g. a 400); `body` is the
    server's error body (parsed JSON, or its text), when it answered."""

    def __init__(self, message: str, final: bool, body: Any = None) -> None:
        super().__init__(message)
        self.final = final
        self.body = body

    @property
    def context_overflow(self) -> tuple[int, int] | None:
        """(the model's context length, tokens the request needed) when the request was too long for the model."""
        overflow = ContextOverflow.from_body(self.body if self.body is not None else str(self))
        if overflow is None:
            return None
        return (overflow.max_context, overflow.requested) if overflow.max_context else (1, 2)  # numbers unknown


def _error_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)  # the message's tool_calls (chat mode, tools sent)


@dataclass
class Endpoint:
    name: str  # the label results are stored under (and, by default, the model name sent)
    base_url: str  # ends in /v1 for most servers
    api_key: str = ""
    mode: Mode = "chat"
    remote_model: str = ""  # the `model` field sent; filled in by `check` when empty

    @property
    def model_field(self) -> str:
        return self.remote_model or self.name


def parse_model_spec(spec: str) -> tuple[str, str]:
    name, sep, url = spec.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise UserError(f"bad --model {spec!r}; write NAME=URL, e.g. smollm2=http://127.0.0.1:8000/v1")
    return name.strip(), url.strip().rstrip("/")


class Client:
    """One pooled httpx client shared by every request of a run."""

    def __init__(self, timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 0.5) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=httpx.Limits(max_connections=64))
        self.requests_sent = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    def _headers(self, endpoint: Endpoint) -> dict[str, str]:
        return {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}

    async def check(self, endpoint: Endpoint) -> None:
        """Fail fast with a clear error when the endpoint is unreachable; learn the served model's name."""
        url = f"{endpoint.base_url}/models"
        try:
            response = await self.http.get(url, headers=self._headers(endpoint), timeout=10.0)
        except httpx.HTTPError as exc:
            raise UserError(
                f"endpoint {endpoint.name!r} at {endpoint.base_url} is unreachable ({type(exc).__name__}: {exc}); "
                "start the server or fix the URL (it usually ends in /v1)"
            ) from exc
        if response.status_code in (401, 403):
            raise UserError(f"endpoint {endpoint.name!r} refused the API key (HTTP {response.status_code}); pass --api-key-env VAR")
        if response.status_code != 200:
            return  # some servers lack /models; requests will tell
        try:
            ids = [m["id"] for m in response.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if not endpoint.remote_model and endpoint.name not in ids and len(ids) == 1:
            endpoint.remote_model = ids[0]

    async def _post(self, endpoint: Endpoint, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        url = f"{endpoint.base_url}{path}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            start = time.perf_counter()
            self.requests_sent += 1
            try:
                response = await self.http.post(url, json=body, headers=self._headers(endpoint))
            except httpx.ReadTimeout as exc:
                # The server took the request and is too slow: resending it only adds load. The item stays
                # unfinished ("error") and the next run retries it.
                raise EndpointError(f"no reply within the timeout from {url} ({exc!r}); raise --timeout", final=False) from exc
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            latency_ms = (time.perf_counter() - start) * 1000
            if response.status_code == 200:
                return response.json(), latency_ms
            last = f"HTTP {response.status_code} from {url}: {response.text[:300]}"
            if response.status_code != 429 and response.status_code < 500:
                raise EndpointError(last, final=True, body=_error_body(response))
        raise EndpointError(f"gave up after {self.retries + 1} attempts: {last}", final=False)

    async def generate(
        self, endpoint: Endpoint, prompt: str, *, system: str = "", max_tokens: int = 256,
        temperature: float = 0.0, stop: list[str] | None = None, mode: Mode | None = None,
        tools: list[dict[str, Any]] | None = None, tool_choice: Any = "auto",
        response_format: dict[str, Any] | None = None,
    ) -> Reply:
        """One answer. `tools` (with `tool_choice`) and `response_format` travel in chat mode, as the OpenAI wire
        carries them; the reply's tool calls come back in `Reply.tool_calls`. In completions mode there is no
        field for either: tools make the request fail (final), while a response_format stays behind and the text
        is judged against its schema all the same (the prompt asks for the JSON too)."""
        mode = mode or endpoint.mode
        body: dict[str, Any] = {"model": endpoint.model_field, "max_tokens": max_tokens, "temperature": temperature}
        if stop:
            body["stop"] = stop
        calls: list[ToolCall] = []
        if mode == "chat":
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            if tools:
                body.update(tools=tools, tool_choice=tool_choice)
            if response_format:
                body["response_format"] = response_format
            data, latency = await self._post(endpoint, "/chat/completions", {**body, "messages": messages})
            message = data["choices"][0]["message"]
            text = message.get("content") or ""
            calls = [_tool_call(c) for c in message.get("tool_calls") or () if isinstance(c, dict)]
        elif tools:
            raise EndpointError(f"endpoint {endpoint.name!r} is in completions mode, which cannot carry tools; "
                                "use chat mode", final=True)
        else:
            full = f"{system}\n\n{prompt}" if system else prompt
            data, latency = await self._post(endpoint, "/completions", {**body, "prompt": full})
            text = data["choices"][0].get("text") or ""
        usage = data.get("usage") or {}
        return Reply(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), latency,
                     tool_calls=calls)

    async def continuation_logprob(self, endpoint: Endpoint, context: str, continuation: str) -> Reply:
        """log P(continuation | context) via `/completions` with echo; extras hold the sum and bits per byte."""
        full = context + continuation
        body = {"model": endpoint.model_field, "prompt": full, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
        data, latency = await self._post(endpoint, "/completions", body)
        logprobs = data["choices"][0].get("logprobs") or {}
        total, first_char = continuation_logprob_from(logprobs, len(context), len(full))
        covered = full[first_char:].encode("utf-8")
        usage = data.get("usage") or {}
        extras = {"logprob": total, "bits_per_byte": -total / max(1, len(covered)) / 0.6931471805599453}
        return Reply("", int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), latency, extras)


def _tool_call(wire: dict[str, Any]) -> ToolCall:
    function = wire.get("function") or {}
    return ToolCall(str(function.get("name") or ""), str(function.get("arguments") or ""))


def continuation_logprob_from(logprobs: dict[str, Any], context_chars: int, total_chars: int) -> tuple[float, int]:
    """Sum the echoed logprobs of tokens overlapping [context_chars, total_chars); also return where they start.

    A token that straddles the boundary (code tokenizers merge a newline with the next indentation) is
    counted, and the bytes it covers are counted with it, so bits per byte stays an honest ratio.
    """
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    offsets = logprobs.get("text_offset")
    if not values:
        raise EndpointError("the endpoint returned no token_logprobs for an echo request; it cannot score likelihoods", final=True)
    if not offsets or len(offsets) != len(values):
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
    ends = list(offsets[1:]) + [10**12]
    total, first = 0.0, total_chars
    for start, end, value in zip(offsets, ends, values, strict=False):
        if start >= total_chars or end <= context_chars:
            continue  # the context, or the one generated token after the echo
        if value is None:
            continue  # the first token has no logprob
        total += float(value)
        first = min(first, start)
    return total, min(first, context_chars)
