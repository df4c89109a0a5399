"""HTTP connections a slow sender cannot hold open: uvicorn's httptools protocol with a deadline on the headers.

uvicorn times out idle keep-alive connections but not a request whose headers arrive one byte at a time, nor a
connection that never sends a byte: 300 such connections held a server's sockets and memory indefinitely (a
"slowloris"). Every connection here must complete a request's headers within `timeout_s` of its first byte (or,
for a new connection, of its opening); otherwise it is closed. Bodies are the application's business: the
gateway answers a slow body with a 408 (`body_timeout_s`), serve with a 413 past its size limit.

One implementation for both servers: `autarky serve` (serve.server) and `autarky gateway` (gateway.server) pass
`http=header_deadline_protocol(timeout_s)` to `uvicorn.Config`. It imports uvicorn only, no torch.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Envoy's and NGINX's defaults are 15-60 s for a request's headers; legitimate clients send them in one packet.
DEFAULT_HEADER_TIMEOUT_S = 20.0


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose connections are closed when a request's headers are not complete in time."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            # No response: the request never reached the app, and a client this slow is not waiting for one.
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is held to the same deadline

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a kept-alive connection: its first byte starts the clock

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_deadline_protocol(timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> type[HeaderDeadlineProtocol]:
    """The protocol class for `uvicorn.Config(http=...)` with this deadline (uvicorn builds the protocol itself,
    so the setting travels as a class attribute)."""
    if not timeout_s > 0:
        raise ValueError(f"header timeout must be positive, not {timeout_s!r}")
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": float(timeout_s)})
