"""What every provider adapter does: send an OpenAI-shaped request, return OpenAI-shaped results.

Failures become UpstreamError with `retryable` set the same way for every provider: connect errors,
timeouts, dropped connections, malformed bodies, 408/429/5xx are retryable; other 4xx are the client's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from autarky.gateway.router import Target


class UpstreamError(Exception):
    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool = True,
        retry_after: float | None = None, body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.body = body


def retry_after_s(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # HTTP-date form: rare from model servers; fall back to our own backoff


def status_error(resp: httpx.Response, body: bytes, who: str) -> UpstreamError:
    status = resp.status_code
    retryable = status in (408, 409, 429) or status >= 500
    text = body[:300].decode("utf-8", "replace")
    return UpstreamError(f"{who} answered {status}: {text}", status=status, retryable=retryable,
                         retry_after=retry_after_s(resp.headers), body=body)


def transport_error(exc: Exception, who: str) -> UpstreamError:
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"{who} timed out ({kind})", status=504)
    return UpstreamError(f"{who} connection failed ({kind}: {exc})", status=502)


def timeout_for(target: Target) -> httpx.Timeout:
    p = target.provider_config
    return httpx.Timeout(p.timeout_s, connect=p.connect_timeout_s)


class Provider:
    """An adapter for one provider kind; stateless apart from the shared client."""

    def __init__(self, client: httpx.AsyncClient, default_max_tokens: int = 1024) -> None:
        self.client = client
        self.default_max_tokens = default_max_tokens

    async def complete(self, target: Target, body: dict, endpoint: str = "chat") -> dict:
        raise NotImplementedError

    def stream(self, target: Target, body: dict, endpoint: str = "chat") -> AsyncIterator[dict]:
        raise NotImplementedError
