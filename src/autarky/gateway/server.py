"""Running the gateway: in the foreground (`autarky gateway`) or in a background thread (tests, demo)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from autarky.gateway.app import Gateway
from autarky.gateway.config import GatewayConfig, load_config


def _uvicorn_config(app, host: str, port: int, log_level: str) -> uvicorn.Config:  # noqa: ANN001
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, loop="uvloop",
                          http="httptools", lifespan="on", timeout_graceful_shutdown=30)


def run_gateway(config: GatewayConfig | str | Path, host: str = "127.0.0.1", port: int = 4000,
                log_level: str = "warning") -> None:
    """Serve until SIGINT/SIGTERM; shutdown waits for in-flight requests and flushes the ledger."""
    if not isinstance(config, GatewayConfig):
        config = load_config(config)
    gateway = Gateway(config)
    uvicorn.Server(_uvicorn_config(gateway.app, host, port, log_level)).run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Any ASGI app on 127.0.0.1 in a background thread with its own event loop; `stop()` shuts it down
    gracefully (lifespan shutdown included). Usable as a context manager."""

    def __init__(self, app, port: int | None = None, log_level: str = "warning") -> None:  # noqa: ANN001
        self.port = port or free_port()
        self.server = uvicorn.Server(_uvicorn_config(app, "127.0.0.1", self.port, log_level))
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
    return gateway, ServerThread(gateway.app, port).start()
