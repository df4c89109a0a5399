"""`autarky serve` cuts off request headers sent a byte at a time (serve.connections, shared with the gateway),
while other clients are served."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest

from fixtures.slowloris import trickle_headers

pytestmark = pytest.mark.timeout(120)


def test_slow_headers_are_closed_at_the_deadline_while_others_are_served(tiny_hf_model_dir, capfd):
    from autarky.serve.registry import ModelRegistry, ServedModelSpec
    from autarky.serve.server import Server

    spec = ServedModelSpec(source=str(tiny_hf_model_dir), name="tiny", max_batch=4, max_queue=16)
    server = Server(ModelRegistry([spec]), header_timeout_s=1.5, max_header_bytes=8192, body_timeout_s=1.5).start()
    try:
        result: list[float | None] = []
        slow = threading.Thread(target=lambda: result.extend(trickle_headers(server.port, 40, 0.3, 10,
                                                                              path="/v1/completions")))
        slow.start()
        served = []
        while slow.is_alive():
            r = httpx.post(f"{server.url}/v1/completions", timeout=30,
                           json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
            served.append(r.status_code)
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # 2 MB of headers: 431, not read whole
            s.settimeout(10)
            with contextlib.suppress(OSError):
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 2_000_000 + b"\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 431")
        assert slow_body(server.port).startswith(b"HTTP/1.1 408")  # a body a byte at a time: cut off
        r = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200  # and the server is fine
    finally:
        server.stop()
    assert None not in result, f"{result.count(None)} of 40 trickling connections still open after 10 s"
    assert 1.4 <= min(result) and max(result) <= 4.0, result
    assert served and set(served) == {200}
    assert "Traceback" not in capfd.readouterr().err  # the cut-off body is no 500 inside the app either


def slow_body(port: int) -> bytes:
    """A request whose body comes a byte every 0.2 s; what the server answered by the time it closed (6 s at
    most)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(0.2)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
        answer, started = b"", time.monotonic()
        while time.monotonic() - started < 6:
            try:
                s.sendall(b" ")
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        assert time.monotonic() - started < 4, "still open"
        return answer


def test_the_header_limits_must_be_positive():
    from autarky.serve.connections import bounded_headers_protocol

    protocol = bounded_headers_protocol(2.5, 1000)
    assert (protocol.header_timeout_s, protocol.max_header_bytes) == (2.5, 1000)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            bounded_headers_protocol(bad)
        with pytest.raises(ValueError, match="positive"):
            bounded_headers_protocol(1.0, bad)
        with pytest.raises(ValueError, match="positive"):
            bounded_headers_protocol(1.0, 1000, bad)
