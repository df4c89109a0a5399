"""HTTP connections a slow or bloated request head cannot hold: uvicorn's httptools protocol with a deadline and a
size limit on each request's headers.

uvicorn times out idle keep-alive connections but not a request whose headers arrive one byte at a time, nor a
connection that never sends a byte (300 such connections held a server's sockets indefinitely: a "slowloris"),
nor the rest of a body the app answered without reading; and httptools buffers headers of any size (an 8 MB
header was read whole and answered). Here every request must complete its headers within `timeout_s` of its
first byte (for a new connection, of its opening), and a body left unread when the response went out must end
within `timeout_s` of it, or the connection is closed; and headers larger than `max_bytes` are a 431 (as Envoy's 60 KiB and NGINX's 32 KiB
limits) and the connection is closed. Bodies are the application's business: the gateway answers a slow body
with a 408 (`body_timeout_s`), both servers a large one with a 413.

One implementation for both servers: `autarky serve` (serve.server) and `autarky gateway` (gateway.server) pass
`http=bounded_headers_protocol(timeout_s, max_bytes)` to `uvicorn.Config`. It imports uvicorn only, no torch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Envoy's and NGINX's defaults are 15-60 s for a request's headers; legitimate clients send them in one packet.
DEFAULT_HEADER_TIMEOUT_S = 20.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0  # autarky serve's; the gateway times bodies itself (body_timeout_s, also 30 s)
LINGER_S = 2.0


class _HeadTooLarge(Exception):
    pass


class BoundedHeadersProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose connections are closed when a request's headers are late or too large."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    body_timeout_s: float | None = None  # None: the app times bodies itself (the gateway answers a 408 of its own)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._reading_headers = True
        self._header_bytes = 0
        self._refused = False
        self._head_bytes = 0  # exact: URL and headers as parsed
        self._too_large = False

    def _arm(self, timeout_s: float | None = None) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(timeout_s or self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if not self._reading_headers and cycle is not None and not cycle.response_started:
            # A body still arriving past body_timeout_s, the app waiting on it: a 408, then the connection closes
            # (the app sees a disconnect; its own answer is dropped). Headers too slow get no answer: the request
            # never reached the app, and a client this slow is not waiting for one.
            body = orjson.dumps({"error": {
                "message": f"request body not received within {self.body_timeout_s:g} s", "type": "invalid_request_error",
                "param": None, "code": "request_timeout"}})
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is held to the same deadline

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a 431: what the client still sends is dropped unread
        super().data_received(data)
        # A head still incomplete after this read is measured by the bytes received (the parser would buffer a
        # huge header whole before handing it over). Counted after parsing, so a read that completes the headers
        # and carries body bytes is not held against them (only a pipelined request whose body and the next
        # request's head share one read can overcount).
        if self._reading_headers and not self._refused and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse_large_headers()

    def _refuse_large_headers(self) -> None:
        body = orjson.dumps({"error": {
            "message": f"request headers larger than {self.max_header_bytes} bytes", "type": "invalid_request_error",
            "param": None, "code": "request_header_fields_too_large"}})
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        # A lingering close (as NGINX's): closing with the client's bytes unread would send a reset that can
        # destroy the answer in flight, so half-close, drop what still comes, and close shortly after.
        self._refused = True
        self._disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._head_bytes = 0
        self._arm()  # the next request on a kept-alive connection: its first byte starts the clock

    # A head that arrives whole in one read is measured exactly, as the parser hands over its parts.
    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.max_header_bytes:
            self._too_large = True
            raise _HeadTooLarge  # the parser stops; uvicorn answers a parse error with send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse_large_headers()
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._reading_headers = False
        self._header_bytes = 0
        super().on_headers_complete()
        if self.body_timeout_s is not None:
            self._arm(self.body_timeout_s)  # disarmed when the body is complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            # Answered without reading the whole body (a 404, /health): uvicorn would wait for the rest, its
            # keep-alive timer reset by every byte, so a trickled body would hold the connection forever. The
            # rest must arrive within the header deadline.
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()  # the body is complete: its deadline, or the deadline on its unread rest, is met
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def bounded_headers_protocol(timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                             body_timeout_s: float | None = None) -> type[BoundedHeadersProtocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these limits (uvicorn builds the protocol itself,
    so the settings travel as class attributes). `body_timeout_s`: a body not complete this long after its
    headers is a 408 and the connection closes (for apps that do not time their bodies)."""
    for what, value in (("header timeout", timeout_s), ("header size limit", max_bytes),
                        ("body timeout", 1 if body_timeout_s is None else body_timeout_s)):
        if not value > 0:
            raise ValueError(f"{what} must be positive, not {value!r}")
    return type("BoundedHeadersProtocol", (BoundedHeadersProtocol,),
                {"header_timeout_s": float(timeout_s), "max_header_bytes": int(max_bytes),
                 "body_timeout_s": None if body_timeout_s is None else float(body_timeout_s)})
