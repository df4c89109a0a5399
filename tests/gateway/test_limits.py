"""No request can stall, bloat or crash the gateway: bounded names, keys and bodies, a deadline on slow bodies,
disconnects that are not 500s, /v1/models behind the key, no ledger rows for unauthenticated requests, and a
4xx envelope for every malformed value."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from sqlalchemy import select

from autarky.gateway.auth import create_key
from autarky.store.gateway_tables import gateway_usage

from .conftest import wait_for_ledger

MESSAGES = [{"role": "user", "content": "hello"}]


def chat(url: str, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(url + "/v1/chat/completions", content=body, headers=headers, timeout=10)
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_a_huge_model_name_is_refused_without_echo_cache_or_ledger_growth(make_gateway, faults):
    gw, url = make_gateway()
    name = "m" * 200_000
    for i in range(3):
        r = chat(url, {"model": name + str(i), "messages": MESSAGES})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        assert len(r.content) < 1000 and "mmmm" not in r.text
    assert gw.router._cache == {}
    r = chat(url, {"model": "small", "messages": MESSAGES}, headers={"x-autarky-task": "t" * 5000})
    assert r.status_code == 400 and len(r.content) < 1000
    wait_for_ledger(gw, 4)
    with gw.engine.connect() as conn:
        errors = [row[0] for row in conn.execute(select(gateway_usage.c.error))]
    assert all(len(e) < 1000 for e in errors)


def test_a_body_over_the_limit_is_413(make_gateway, faults):
    _, url = make_gateway(max_body_bytes=2000)
    r = chat(url, {"model": "small", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert chat(url, {"model": "small", "messages": MESSAGES}).status_code == 200


def _slow_client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
              b"content-length: 1000\r\n\r\n{")
    s.settimeout(0.05)
    return s


def test_slow_bodies_are_cut_off_and_their_connections_closed(make_gateway, faults):
    gw, url = make_gateway(body_timeout_s=1.0)
    port = int(url.rsplit(":", 1)[1])
    clients = [_slow_client(port) for _ in range(8)]
    answers = {i: b"" for i in range(len(clients))}
    closed: set[int] = set()
    deadline = time.monotonic() + 6
    while len(closed) < len(clients) and time.monotonic() < deadline:
        for i, s in enumerate(clients):
            if i in closed:
                continue
            try:
                s.sendall(b" ")  # a byte now and then: the trickle that used to hold a connection forever
                data = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed.add(i)
                continue
            if data:
                answers[i] += data
            else:
                closed.add(i)
        time.sleep(0.2)
    for s in clients:
        s.close()
    assert len(closed) == len(clients)
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers.values())
    wait_for_ledger(gw, len(clients))


def test_a_client_that_leaves_mid_body_is_a_499_not_a_500(make_gateway, faults, caplog):
    gw, url = make_gateway()
    port = int(url.rsplit(":", 1)[1])
    s = _slow_client(port)
    time.sleep(0.2)
    s.close()
    wait_for_ledger(gw, 1)
    with gw.engine.connect() as conn:
        assert [r[0] for r in conn.execute(select(gateway_usage.c.status))] == [499]
    assert "Traceback" not in caplog.text and "failed inside the gateway" not in caplog.text


def test_models_list_needs_a_key_when_keys_are_required(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    assert httpx.get(url + "/v1/models").status_code == 401
    key, _ = create_key(gw.engine, "default")
    r = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["data"]


def test_unauthenticated_requests_write_no_ledger_rows(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    for i in range(20):
        r = chat(url, {"model": "x" * 100, "messages": MESSAGES},
                 headers={"authorization": f"Bearer nope-{i}"} if i % 2 else None)
        assert r.status_code == 401
    gw.ledger.flush()
    assert gw.ledger.written == 0 and gw.ledger.pending == 0
    assert 'status="401"' in httpx.get(url + "/metrics").text  # still counted


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer ключ".encode()},
    {"authorization": b"Bearer \xff\xfe"},
    {"authorization": "Bearer " + "k" * 5000},
    {"x-api-key": ("é" * 10).encode()},
])
def test_odd_keys_are_401_not_500(make_gateway, faults, headers):
    _, url = make_gateway(require_keys=True)
    r = chat(url, {"model": "small", "messages": MESSAGES}, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("extra", [
    {"max_completion_tokens": "abc"}, {"max_completion_tokens": 1.5}, {"max_tokens": True}, {"n": "2"},
    {"stream_options": "yes"}, {"stream_options": [1]}, {"stream": "yes"},
    {"stop": 5}, {"stop": [1, 2]}, {"stop": ["x"] * 100}, {"stop": "s" * 5000},
    {"messages": ["x"]}, {"messages": [{"role": 5, "content": "x"}]}, {"messages": [{"role": "user", "content": 5}]},
    {"messages": "hello"},
])
def test_malformed_values_are_400_envelopes(make_gateway, faults, extra):
    gw, url = make_gateway()
    key, _ = create_key(gw.engine, "default", budget_usd=10.0)  # a budget: the spend estimate reads the fields
    r = chat(url, {"model": "small", "messages": MESSAGES, **extra}, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert len(r.content) < 1000


@pytest.mark.parametrize("raw", [
    b'{"model": "small", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "small", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    b"\xff\xfe",
    b"",
])
def test_lone_surrogates_and_bad_bytes_are_400(make_gateway, faults, raw):
    _, url = make_gateway()
    r = chat(url, raw, headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_a_missing_content_type_is_still_read_as_json(make_gateway, faults):
    _, url = make_gateway()
    r = httpx.post(url + "/v1/chat/completions", content=b'{"model": "small", "messages": [{"role": "user", '
                   b'"content": "hi"}]}', headers={"content-type": ""})
    assert r.status_code == 200


def test_anthropic_malformed_values_are_400(make_gateway, faults):
    _, url = make_gateway()
    for body in ({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]},
                 {"model": "claude", "max_tokens": "5", "messages": MESSAGES},
                 {"model": "claude", "max_tokens": 5, "messages": MESSAGES, "system": 5}):
        r = httpx.post(url + "/v1/messages", json=body, timeout=10)
        assert 400 <= r.status_code < 500 and r.json()["type"] == "error", (body, r.text)
