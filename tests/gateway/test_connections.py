"""Connections and start-up (issue 14): request headers sent a byte at a time are cut off at the configured
deadline while other clients are served, and `autarky gateway` prints one `Error:` line and no banner when it
cannot start (the banner comes only once it serves)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from autarky.gateway.server import free_port, wait_for_http
from fixtures.slowloris import trickle_headers

from .conftest import base_config, merge, to_toml

BANNER = "autarky gateway:"


def test_slow_headers_are_closed_at_the_deadline_while_others_are_served(make_gateway, faults):
    gw, url = make_gateway(header_timeout_s=1.5)
    port = int(url.rsplit(":", 1)[1])
    result: list[float | None] = []
    slow = threading.Thread(target=lambda: result.extend(trickle_headers(port, 60, every_s=0.3, within_s=10)))
    slow.start()
    served = []
    while slow.is_alive():
        r = httpx.post(url + "/v1/chat/completions", timeout=10,
                       json={"model": "small", "messages": [{"role": "user", "content": "hi"}]})
        served.append(r.status_code)
        time.sleep(0.1)
    assert None not in result, f"{result.count(None)} of 60 trickling connections still open after 10 s"
    # Closed at the deadline: not before it (the bytes kept coming), and not long after.
    assert 1.4 <= min(result) and max(result) <= 4.0, result
    assert served and set(served) == {200}


def test_a_connection_that_never_sends_is_closed_and_a_kept_alive_one_is_timed_per_request(make_gateway, faults):
    _, url = make_gateway(header_timeout_s=1.0)
    port = int(url.rsplit(":", 1)[1])
    silent = socket.create_connection(("127.0.0.1", port))
    silent.settimeout(5)
    started = time.monotonic()
    assert silent.recv(100) == b""  # closed by the server, not by our timeout
    assert time.monotonic() - started < 3
    silent.close()
    # A request on a connection that already served one gets the deadline anew, from its own first byte.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(5)
        time.sleep(0.7)  # most of the deadline spent idle before the first request: that is not held against it
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the next request's headers never finish
        started = time.monotonic()
        assert s.recv(65536) == b""
        assert time.monotonic() - started < 3


def test_a_body_the_gateway_did_not_read_cannot_be_trickled_forever(make_gateway, faults):
    _, url = make_gateway(header_timeout_s=1.0)
    port = int(url.rsplit(":", 1)[1])
    for head in (b"GET /health", b"POST /no-such-route", b"GET /v1/models"):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(0.3)
            s.sendall(head + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
            started, answer, closed = time.monotonic(), b"", False
            while time.monotonic() - started < 6 and not closed:
                try:
                    s.sendall(b" ")  # the rest of the body, a byte at a time
                    chunk = s.recv(65536)
                    answer += chunk
                    closed = chunk == b""
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
            assert closed and time.monotonic() - started < 3, head
            assert answer.startswith(b"HTTP/1.1 "), answer[:50]  # it was answered first


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        try:
            s.sendall(data)
        except OSError:  # closed while we were still sending: read what it answered
            pass
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
        return answer


def test_headers_over_the_limit_are_431_and_bodies_are_not_counted_as_headers(make_gateway, faults):
    _, url = make_gateway(max_header_bytes=8192)
    port = int(url.rsplit(":", 1)[1])
    for head in (b"X-Big: " + b"y" * 2_000_000 + b"\r\n", b"".join(b"X-%d: v\r\n" % i for i in range(5000))):
        answer = _send(port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
        assert b"request_header_fields_too_large" in answer
    # A body many times the header limit, sent with its headers in one go, is a body: served.
    big = {"model": "small", "messages": [{"role": "user", "content": "x" * 20_000}]}  # within its context
    assert httpx.post(url + "/v1/chat/completions", json=big, timeout=20).status_code == 200
    assert httpx.get(url + "/health", headers={"x-pad": "p" * 6000}).status_code == 200


def test_header_timeout_is_validated(make_gateway, faults):
    from autarky.errors import UserError
    from autarky.gateway.config import parse_config

    for bad in (0, -1, float("nan"), float("inf"), "soon"):
        with pytest.raises(UserError, match="header_timeout_s"):
            parse_config({"header_timeout_s": bad})
    for bad in (0, -5, 1.5, "big"):
        with pytest.raises(UserError, match="max_header_bytes"):
            parse_config({"max_header_bytes": bad})


# ---- `autarky gateway` start-up: every check first, the banner only once it serves ----------------------------

def _gateway_cli(config: str, port: int, home: str) -> subprocess.Popen:
    command = [sys.executable, "-c", "from autarky.cli import main; main()", "gateway", "--config", config]
    return subprocess.Popen([*command, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "AUTARKY_HOME": home})


def _fails_with_one_error_line(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out
    assert BANNER not in out and "Traceback" not in out
    return lines[0]


def test_start_up_errors_are_one_error_line_and_no_banner(tmp_path, upstream_server):
    server, _ = upstream_server
    config = tmp_path / "gw.toml"
    config.write_text(to_toml(base_config(server.url, f"sqlite:///{tmp_path}/gw.db")))
    home = str(tmp_path / "home")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        line = _fails_with_one_error_line(_gateway_cli(str(config), busy.getsockname()[1], home))
        assert "already in use" in line
    bad = tmp_path / "bad.toml"
    bad.write_text(to_toml(merge(base_config(server.url, "sqlite://"), {"header_timeout_s": -1})))
    assert "header_timeout_s" in _fails_with_one_error_line(_gateway_cli(str(bad), free_port(), home))

    # A second gateway on the same SQLite file is refused at start-up; the first one printed its banner once up.
    port = free_port()
    first = _gateway_cli(str(config), port, home)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc=first)
        assert "SQLite" in _fails_with_one_error_line(_gateway_cli(str(config), free_port(), home))
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=60)
    assert out.count(BANNER) == 1 and "Error" not in out
