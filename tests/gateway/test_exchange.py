"""The exchange: its closing moves are idempotent, and a request gets exactly one ledger row however it ends
(over the in-memory accounting, then through a live gateway: streamed and not, success, upstream failure,
client gone)."""

import asyncio
import time

import httpx
import pytest

from autarky.gateway.accounting import MemoryAccounting
from autarky.gateway.auth import KeyRecord
from autarky.gateway.config import ModelEntry, ProviderConfig
from autarky.gateway.errors import budget_exceeded
from autarky.gateway.exchange import Exchange
from autarky.gateway.router import RouteDecision, Target

KEY = KeyRecord(id="key_1", team="t", budget_usd=1.0, spent_usd=0.0, rpm=None, tpm=None, models=None)
TARGET = Target(rank=0, model="m", model_entry=ModelEntry(provider="p", usd_per_1m_input=1e6, usd_per_1m_output=2e6),
                provider="p", provider_config=ProviderConfig(base_url="http://127.0.0.1:9/v1"), score=0.0,
                usd_per_1k=0.0, p50_latency_ms=0.0)


def admitted(accounting: MemoryAccounting, reserve: float = 0.5) -> Exchange:
    ex = Exchange(accounting, "chat")
    ex.authenticated(KEY)
    ex.routed(RouteDecision((TARGET,), "t", "task=t"))
    asyncio.run(ex.admit(reserve))
    return ex


def test_finish_twice_writes_one_row():
    acc = MemoryAccounting()
    ex = admitted(acc)
    ex.outcome.target = TARGET
    ex.settle(3, 4)
    ex.succeeded()
    ex.finish()
    ex.finish()
    assert len(acc.rows) == 1 and acc.rows[0].status == 200 and ex.finished
    assert acc.settlements == [("key_1", 0.5, 3 * 1.0 + 4 * 2.0, 7)] and acc.open_reservations == 0


def test_settle_and_fail_after_finish_change_nothing():
    acc = MemoryAccounting()
    ex = admitted(acc)
    ex.fail(502, "upstream down")
    ex.finish()
    row = acc.rows[0]
    ex.outcome.target = TARGET
    ex.fail(499, "late")
    ex.settle(10, 10)
    ex.finish()
    assert len(acc.rows) == 1 and (row.status, row.error, row.cost_usd) == (502, "upstream down", 0.0)
    assert acc.settlements == [("key_1", 0.5, 0.0, 0)]  # released once, at finish


def test_first_failure_wins_and_settle_charges_once():
    acc = MemoryAccounting()
    ex = admitted(acc)
    ex.outcome.target = TARGET
    ex.streaming()
    ex.fail(502, "upstream failed mid-stream")
    ex.fail(499, "client disconnected mid-stream")  # what a stream's close says after the upstream failed
    ex.succeeded()
    ex.settle(2, 1)
    ex.settle(2, 5)
    ex.finish()
    [row] = acc.rows
    assert (row.status, row.error, row.completion_tokens, row.stream) == (502, "upstream failed mid-stream", 1, True)
    assert acc.settlements == [("key_1", 0.5, 4.0, 3)]  # tokens used before the failure are charged


def test_failure_before_admission_writes_a_row_and_settles_nothing():
    acc = MemoryAccounting(refuse=budget_exceeded("no money"))
    ex = Exchange(acc, "messages")
    ex.authenticated(KEY)
    with pytest.raises(Exception, match="no money"):
        asyncio.run(ex.admit(0.5))
    ex.fail(429, "no money")
    ex.finish()
    assert [(r.status, r.key_id, r.team, r.endpoint) for r in acc.rows] == [(429, "key_1", "t", "messages")]
    assert acc.settlements == []


def test_request_ids_are_unique_and_headers_name_the_route():
    acc = MemoryAccounting()
    a, b = admitted(acc), admitted(acc)
    assert a.request_id != b.request_id
    a.outcome.target = TARGET
    a.outcome.notes.append("failover from q (502)")
    h = a.headers()
    assert h["x-autarky-model"] == "m" and h["x-autarky-route-reason"] == "task=t; failover from q (502)"
    assert a.error_headers() == {"x-autarky-request-id": a.request_id, "x-autarky-route-reason": "task=t"}


def _rows_when(acc: MemoryAccounting, n: int, timeout_s: float = 10.0) -> list:
    deadline = time.monotonic() + timeout_s
    while len(acc.rows) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # a second row for the same request would show up now
    return acc.rows


MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.mark.parametrize("stream", [False, True])
def test_one_row_per_request_through_a_live_gateway(make_gateway, faults, stream):
    acc = MemoryAccounting()
    _, url = make_gateway(accounting=acc, retry={"max_retries": 0})
    body = {"model": "small", "messages": MESSAGES, "stream": stream}
    ids = []

    ok = httpx.post(url + "/v1/chat/completions", json=body, timeout=20)  # success
    ids.append(ok.headers["x-autarky-request-id"])
    faults.script("small-up", "500")  # upstream failure: 502 before the first byte
    failed = httpx.post(url + "/v1/chat/completions", json=body, timeout=20)
    ids.append(failed.headers["x-autarky-request-id"])
    assert (ok.status_code, failed.status_code) == (200, 502)
    if stream:  # an upstream failure after the first byte, then a client gone mid-stream
        faults.script("small-up", "die:2", "stall:30")
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=20) as r:
            ids.append(r.headers["x-autarky-request-id"])
            r.read()
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=20) as r:
            ids.append(r.headers["x-autarky-request-id"])
            next(r.iter_lines())
        n = 4
    else:  # a client gone while the upstream thinks
        faults.script("small-up", "latency:30")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.5)
        n = 3
    rows = _rows_when(acc, n)
    assert len(rows) == n and len({r.request_id for r in rows}) == n
    by_id = {r.request_id: r for r in rows}
    assert [by_id[i].status for i in ids] == ([200, 502, 502, 499] if stream else [200, 502])
    assert all(r.stream == stream for r in rows if r.status == 200)
    assert by_id[ids[0]].prompt_tokens == 2 and by_id[ids[0]].completion_tokens == 8
    assert sorted(r.status for r in rows) == sorted([200, 502, 502, 499] if stream else [200, 502, 499])
    assert acc.open_reservations == 0
