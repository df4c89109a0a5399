"""Running the gateway: in the foreground (`autarky gateway`) or in a background thread (tests, demo)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn

from autarky.errors import UserError
from autarky.gateway.app import Gateway
from autarky.gateway.config import GatewayConfig, load_config
from autarky.serve.connections import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_HEADER_BYTES,
    bounded_headers_protocol,
)


def _uvicorn_config(app, host: str, port: int, log_level: str, graceful_s: float = 30,  # noqa: ANN001
                    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> uvicorn.Config:
    # No access log and no proxy-header rewriting: each is a per-request cost we do not need on the hot path.
    # httptools with a deadline and a size limit on request headers (serve.connections).
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, loop="uvloop",
                          http=bounded_headers_protocol(header_timeout_s, max_header_bytes), lifespan="on",
                          timeout_graceful_shutdown=graceful_s, proxy_headers=False, server_header=False)


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server that calls `on_started` once it is really serving (after the app's start-up)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on exactly (host, port), or UserError: never another port, never a traceback."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: must be between 1 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be opened ({exc.strerror or exc})"
        raise UserError(f"{host}:{port} {why}; choose another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def run_gateway(config: GatewayConfig | str | Path, host: str = "127.0.0.1", port: int = 4000,
                log_level: str = "warning", on_started: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; shutdown waits for in-flight requests and flushes the ledger. `on_started`
    runs once the gateway serves (every check passed): the CLI prints its banner there, never before an error."""
    if not isinstance(config, GatewayConfig):
        config = load_config(config)
    sock = bind(host, port)  # before anything else starts: a bad or busy port is one Error line
    try:
        gateway = Gateway(config)
        server = _AnnouncingServer(
            _uvicorn_config(gateway.app, host, port, log_level, header_timeout_s=config.header_timeout_s,
                            max_header_bytes=config.max_header_bytes), on_started)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:  # the app's start-up failed: uvicorn has logged why
        raise UserError(f"the gateway on {host}:{port} did not start (see the log above)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Any ASGI app on 127.0.0.1 in a background thread with its own event loop; `stop()` shuts it down
    gracefully (lifespan shutdown included). Usable as a context manager."""

    def __init__(self, app, port: int | None = None, log_level: str = "warning",  # noqa: ANN001
                 graceful_s: float = 30, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(_uvicorn_config(app, "127.0.0.1", self.port, log_level, graceful_s,
                                                     header_timeout_s, max_header_bytes))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"server-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.server.run()

    def start(self, timeout_s: float = 20.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_gateway(config: GatewayConfig | str | Path, port: int | None = None) -> tuple[Gateway, ServerThread]:
    """An in-process gateway on 127.0.0.1 (for the demo and tests): returns the Gateway and its server."""
    if not isinstance(config, GatewayConfig):
        config = load_config(config)
    gateway = Gateway(config)
    return gateway, ServerThread(gateway.app, port, header_timeout_s=config.header_timeout_s,
                                 max_header_bytes=config.max_header_bytes).start()


def wait_for_http(url: str, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers (any status); raise if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


def start_gateway_process(config: str | Path, port: int | None = None, env: dict[str, str] | None = None,
                          log_level: str = "warning") -> tuple[subprocess.Popen, str]:
    """`autarky gateway` as a subprocess on 127.0.0.1; returns (process, base URL) once it answers.
    Stop it with `proc.terminate(); proc.wait()`: SIGTERM drains in-flight requests and flushes the ledger."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autarky.gateway", "gateway", "--config", str(config), "--port", str(port),
         "--log-level", log_level],
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", proc=proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url
