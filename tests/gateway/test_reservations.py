"""Budget reservations held in the store (shared limits) are released exactly once, whoever releases them: the
gateway that took them, a start-up replaying a killed gateway's journal (tests/gateway/test_ledger_crash.py), or
the expiry sweep; and a gateway starting beside a live one never releases the live one's reservations."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from autarky.gateway.auth import Limiter, create_key, list_keys
from autarky.gateway.ledger import STOPPED_ERROR, STOPPED_STATUS, Ledger, Usage
from autarky.gateway.server import start_gateway_process
from autarky.store.database import open_store
from autarky.store.gateway_tables import gateway_reservations, gateway_usage

from .conftest import base_config, merge, to_toml, wait_for_ledger


def reserved(engine) -> float:
    return list_keys(engine)[0]["reserved_usd"]


def test_expired_reservations_are_released_once_and_a_late_settlement_subtracts_nothing(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path}/r.db")
    _, key = create_key(engine, "t", budget_usd=10.0)
    limiter = Limiter(engine, shared=True)
    ledger = Ledger(engine, shared=True, journal=False, reservation_ttl_s=60)
    old = asyncio.run(limiter.admit(key, 1.5, request_id="old"))
    asyncio.run(limiter.admit(key, 2.0, request_id="new"))
    assert reserved(engine) == pytest.approx(3.5)
    assert ledger.expire_reservations(now=time.time() + 30) == 0  # nothing is that old yet
    assert ledger.expire_reservations(now=time.time() + 61) == 2
    assert reserved(engine) == pytest.approx(0.0)
    with engine.connect() as conn:
        assert conn.execute(select(gateway_reservations)).all() == []
    # The request that outlived its reservation finishes: it is charged, and nothing is released twice.
    ledger.record(Usage("old", time.time(), "chat", 200, key_id=key.id, cost_usd=0.25, reserved_usd=old.reserved_usd))
    assert ledger.flush()
    [k] = list_keys(engine)
    assert k["spent_usd"] == pytest.approx(0.25) and k["reserved_usd"] == pytest.approx(0.0)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_gateway_starting_beside_a_live_one_leaves_its_reservations_alone(make_gateway, faults, pg_store,
                                                                              monkeypatch, tmp_path):
    monkeypatch.setenv("AUTARKY_HOME", str(tmp_path / "home"))  # one host: both share the journal folder
    a, url_a = make_gateway(store=pg_store, require_keys=True, teams={"t": {}})
    key, _ = create_key(a.engine, "t", budget_usd=100.0)
    faults.default["gpt-up"] = "latency:1.5"  # under the provider timeout (2 s)
    answers: list[int] = []
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    slow = threading.Thread(target=lambda: answers.append(httpx.post(
        url_a + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=20,
    ).status_code))
    slow.start()
    deadline = time.monotonic() + 5
    while reserved(a.engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    held = reserved(a.engine)
    assert held > 0
    b, _ = make_gateway(store=pg_store, require_keys=True, teams={"t": {}})  # its start-up replays orphans
    b.ledger._replay_orphans()  # and what it does every minute: a live gateway's journal is not an orphan
    assert reserved(b.engine) == pytest.approx(held)
    slow.join()
    assert answers == [200]
    wait_for_ledger(a, 1)
    [k] = list_keys(a.engine)
    assert k["reserved_usd"] == pytest.approx(0.0) and k["spent_usd"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite-shared", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_with_requests_in_flight_releases_their_reservations(upstream_server, faults, tmp_path, backend,
                                                                     request):
    server, _ = upstream_server
    store = f"sqlite:///{tmp_path}/k.db" if backend != "postgres" else request.getfixturevalue("pg_store")
    config = tmp_path / "gw.toml"
    config.write_text(to_toml(merge(base_config(server.url, store), {"require_keys": True, "limits": "shared"})))
    engine = open_store(store)
    key, _ = create_key(engine, "t", budget_usd=100.0)
    env = {"AUTARKY_HOME": str(tmp_path / "home")}
    faults.default["gpt-up"] = "latency:1.5"  # every request held at the upstream when the kill comes
    gateway, url = start_gateway_process(config, env=env)
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    clients = [threading.Thread(target=lambda: _post_quietly(url, body, key)) for _ in range(5)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 10
    while held_rows(engine) < 5 and time.monotonic() < deadline:  # all five admitted, none answered yet
        time.sleep(0.02)
    held = reserved(engine)
    gateway.send_signal(signal.SIGKILL)
    gateway.wait()
    for c in clients:
        c.join()
    assert held > 0 and held_rows(engine) == 5
    again, _ = start_gateway_process(config, env=env)  # its start-up replays the killed one's journal
    again.send_signal(signal.SIGTERM)
    again.wait(60)
    [k] = list_keys(engine)
    assert k["reserved_usd"] == pytest.approx(0.0, abs=1e-9) and k["spent_usd"] == 0.0
    with engine.connect() as conn:
        assert conn.execute(select(gateway_reservations)).all() == []
        rows = conn.execute(select(gateway_usage)).all()
    assert len(rows) == 5 and all(r.status == STOPPED_STATUS and r.error == STOPPED_ERROR for r in rows)


def held_rows(engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(gateway_reservations)).all())


def _post_quietly(url: str, body: dict, key: str) -> None:
    try:
        httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)
    except httpx.TransportError:
        pass  # the gateway was killed under it
