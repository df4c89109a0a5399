"""Running the app under uvicorn: blocking for the CLI, in a background thread for tests and the demo."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import uvicorn

from autarky.serve.api import create_app
from autarky.serve.connections import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_HEADER_BYTES,
    bounded_headers_protocol,
)
from autarky.serve.options import DEFAULT_MAX_BODY_MB
from autarky.serve.registry import ModelRegistry


class Server:
    """A uvicorn server on a socket bound up front, so port 0 picks a free port with no race."""

    def __init__(
        self,
        registry: ModelRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        on_ready: Callable[[], None] | None = None,
        log_level: str = "warning",
        exit_on_load_failure: bool = False,
        api_key: str | None = None,
        max_body_mb: float = DEFAULT_MAX_BODY_MB,
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    ) -> None:
        self.registry = registry
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        on_failure = self._exit if exit_on_load_failure else None
        app = create_app(registry, on_ready, on_failure, api_key, max_body_mb)
        # Request heads within header_timeout_s and max_header_bytes, bodies within body_timeout_s (a 408):
        # a slow sender cannot hold a connection (serve.connections).
        config = uvicorn.Config(app, log_level=log_level, access_log=False,
                                http=bounded_headers_protocol(header_timeout_s, max_header_bytes, body_timeout_s))
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (uvicorn's handlers: stop accepting, finish open requests, then the
        app's shutdown finishes whatever the engines still hold). A stop signal is a normal exit: status 0."""
        if threading.current_thread() is not threading.main_thread():
            self.uvicorn.run(sockets=[self.sock])
            return
        # uvicorn re-raises the signal it caught once it has shut down; these no-op handlers absorb it.
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self, timeout: float = 300.0, wait_for_models: bool = True) -> Server:
        """Serve from a background thread; return once listening and (by default) once the models are loaded."""
        self._thread = threading.Thread(target=self.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not (self.uvicorn.started and (self.registry.ready.is_set() or not wait_for_models)):
            if self.registry.error:
                self.stop()
                raise RuntimeError(f"model loading failed: {self.registry.error}")
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the server did not become ready within {timeout:.0f}s")
            time.sleep(0.02)
        return self

    def _exit(self) -> None:
        self.uvicorn.should_exit = True

    def stop(self, timeout: float = 60.0) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()
