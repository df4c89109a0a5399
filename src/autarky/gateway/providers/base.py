"""What every provider adapter does: send an OpenAI-shaped request, return OpenAI-shaped results.

Failures become UpstreamError with `retryable` set the same way for every provider: connect errors,
timeouts, dropped connections, malformed bodies, 408/429/5xx are retryable; other 4xx are the client's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import orjson

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


def retry_after_s(headers: Mapping[str, str]) -> float | None:
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


def status_error(resp: aiohttp.ClientResponse, body: bytes, who: str) -> UpstreamError:
    status = resp.status
    retryable = status in (408, 409, 429) or status >= 500
    text = body[:300].decode("utf-8", "replace")
    return UpstreamError(f"{who} answered {status}: {text}", status=status, retryable=retryable,
                         retry_after=retry_after_s(resp.headers), body=body)


# What a failed exchange with an upstream can raise (aiohttp's timeouts are also asyncio.TimeoutError).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


def transport_error(exc: BaseException, who: str) -> UpstreamError:
    kind = type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(f"{who} timed out ({kind})", status=504)
    return UpstreamError(f"{who} connection failed ({kind}: {exc})", status=502)


def timeout_for(target: Target) -> aiohttp.ClientTimeout:
    # sock_read bounds each wait for bytes: a whole non-streamed answer, or the silence between stream chunks.
    p = target.provider_config
    return aiohttp.ClientTimeout(total=None, sock_connect=p.connect_timeout_s, sock_read=p.timeout_s)


async def sse_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """The lines of an SSE body, in batches of what each network read brought, whatever their length
    (aiohttp's own line reader caps lines at 64 KiB). Batches let us answer with one write per read."""
    buffer = b""
    async for data in resp.content.iter_any():
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        if lines:
            yield [line.rstrip(b"\r") for line in lines]
    if buffer:
        yield [buffer]


async def post(session: aiohttp.ClientSession, target: Target, url: str, payload: bytes,
               headers: dict[str, str]) -> aiohttp.ClientResponse:
    try:
        return await session.post(url, data=payload, headers=headers, timeout=timeout_for(target))
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, target.provider) from exc


async def post_json(session: aiohttp.ClientSession, target: Target, url: str, payload: bytes,
                    headers: dict[str, str]) -> dict:
    """A non-streamed exchange: the upstream's JSON object, or UpstreamError for a status, transport or body fault."""
    who = target.provider
    resp = await post(session, target, url, payload, headers)
    content = await read_body(resp, who)
    if resp.status >= 400:
        raise status_error(resp, content, who)
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"{who} sent malformed JSON", status=502) from exc
    if not isinstance(data, dict):
        raise UpstreamError(f"{who} sent JSON that is not an object", status=502)
    return data


async def read_body(resp: aiohttp.ClientResponse, who: str) -> bytes:
    try:
        return await resp.read()
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, who) from exc
    finally:
        resp.release()


class Provider:
    """An adapter for one provider kind; stateless apart from the shared client."""

    def __init__(self, session: aiohttp.ClientSession, default_max_tokens: int = 1024) -> None:
        self.session = session
        self.default_max_tokens = default_max_tokens

    async def complete(self, target: Target, body: dict, endpoint: str = "chat") -> dict:
        raise NotImplementedError

    def stream(self, target: Target, body: dict, endpoint: str = "chat") -> AsyncIterator[list[dict]]:
        """OpenAI chat chunks, in batches (one per network read)."""
        raise NotImplementedError


# One `data:` payload → (OpenAI chunks, whether it ended the stream); raises UpstreamError for in-band errors.
PayloadParser = Callable[[bytes], tuple[list[dict], bool]]


async def relay_stream(resp: aiohttp.ClientResponse, who: str, parse: PayloadParser,
                       end_marker: str) -> AsyncIterator[list[dict]]:
    """Batches of OpenAI chunks from an upstream's SSE response, one batch per network read.

    What arrived before a failure still reaches the client. A finished stream returns its connection to the
    pool; an abandoned one is closed, which is what cancels the generation upstream."""
    done = False
    try:
        if resp.status >= 400:
            raise status_error(resp, await read_body(resp, who), who)
        async for lines in sse_lines(resp):
            batch: list[dict] = []
            failure: UpstreamError | None = None
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments (keep-alives), `event:` lines
                try:
                    chunks, done = parse(line[5:].strip())
                except UpstreamError as exc:
                    failure = exc
                    break
                batch.extend(chunks)
                if done:
                    break
            if batch:
                yield batch
            if failure is not None:
                raise failure
            if done:
                break
        if not done:
            raise UpstreamError(f"{who} ended the stream without {end_marker}", status=502)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, who) from exc
    finally:
        if done:
            resp.release()
        else:
            resp.close()
