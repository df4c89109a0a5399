"""The PostgreSQL path: two gateway instances sharing one database enforce one key's limits and budget
together, and the audit chain stays intact with concurrent writers."""

import threading
import time

import httpx
import pytest
from sqlalchemy import select, text

from autarky.gateway import audit
from autarky.gateway.auth import create_key, list_keys
from autarky.store.database import open_store
from autarky.store.gateway_tables import gateway_usage

from .conftest import avoid_minute_boundary, wait_for_ledger

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
MESSAGES = [{"role": "user", "content": "one two three"}]


def chat(url: str, key: str, model: str = "small") -> int:
    r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=20,
                   json={"model": model, "messages": MESSAGES, "max_tokens": 8})
    return r.status_code


def two_gateways(make_gateway, pg_store):
    # team "t" in the config: the admin API refuses keys for teams it does not list
    a, url_a = make_gateway(store=pg_store, require_keys=True, teams={"t": {}})
    b, url_b = make_gateway(store=pg_store, require_keys=True, teams={"t": {}})
    assert a.config.shared_limits() and b.config.shared_limits()
    return (a, url_a), (b, url_b)


def test_rpm_is_shared_across_replicas(make_gateway, faults, pg_store):
    (a, url_a), (b, url_b) = two_gateways(make_gateway, pg_store)
    key, _ = create_key(a.engine, "t", rpm=4)
    avoid_minute_boundary()
    codes = [chat(url, key) for url in (url_a, url_b) * 3]
    assert sorted(codes) == [200] * 4 + [429] * 2
    assert len(faults.calls) == 4


def test_budget_is_shared_across_replicas_under_concurrency(make_gateway, faults, pg_store):
    (a, url_a), (b, url_b) = two_gateways(make_gateway, pg_store)
    # gpt: 3 in + 8 out tokens at $1000/$2000 per 1M = $0.019 a request; the reservation is a bit higher.
    key, _ = create_key(a.engine, "t", budget_usd=0.1)
    codes: list[int] = []

    def client(url: str) -> None:
        for _ in range(6):
            codes.append(chat(url, key, model="gpt"))

    threads = [threading.Thread(target=client, args=(u,)) for u in (url_a, url_b, url_a, url_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = codes.count(200)
    assert 3 <= admitted <= 5 and codes.count(429) == 24 - admitted
    # A row is queued just after its response went out, so the last ones can trail the clients: wait for all 24.
    deadline = time.monotonic() + 10
    while a.ledger.written + b.ledger.written < 24 and time.monotonic() < deadline:
        a.ledger.flush()
        b.ledger.flush()
        time.sleep(0.01)
    [row] = list_keys(a.engine)
    assert row["spent_usd"] == pytest.approx(0.019 * admitted) and row["spent_usd"] <= 0.1
    assert row["reserved_usd"] == pytest.approx(0.0, abs=1e-9)
    with a.engine.connect() as conn:
        rows = conn.execute(select(gateway_usage.c.status)).all()
    assert len(rows) == 24


def test_revocation_and_keys_on_postgres(make_gateway, faults, pg_store):
    (a, url_a), (b, url_b) = two_gateways(make_gateway, pg_store)
    from .conftest import MASTER

    made = httpx.post(url_a + "/admin/keys", json={"team": "t"}, headers={"authorization": f"Bearer {MASTER}"})
    key, key_id = made.json()["key"], made.json()["id"]
    assert chat(url_b, key) == 200
    httpx.delete(url_a + f"/admin/keys/{key_id}", headers={"authorization": f"Bearer {MASTER}"})
    b.keys.invalidate()  # what the cache TTL does within key_cache_ttl_s
    assert chat(url_b, key) == 401


def test_audit_chain_with_concurrent_writers_and_tampering(pg_store):
    engines = [open_store(pg_store), open_store(pg_store)]

    def writer(engine, i: int) -> None:
        for j in range(15):
            audit.append(engine, f"writer{i}", "test", {"j": j})

    threads = [threading.Thread(target=writer, args=(engines[i % 2], i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows, problems = audit.verify(engines[0])
    assert rows == 60 and problems == []
    with engines[0].begin() as conn:
        conn.execute(text("UPDATE gateway_audit SET detail = '{\"j\": 99}' WHERE seq = 30"))
        conn.execute(text("DELETE FROM gateway_audit WHERE seq = 45"))
    _, problems = audit.verify(engines[1])
    assert problems[0] == "seq 30: contents do not match its hash (row edited)"
    assert "seq 45: row(s) deleted" in problems


def test_tpm_is_shared_across_replicas(make_gateway, faults, pg_store):
    (a, url_a), (b, url_b) = two_gateways(make_gateway, pg_store)
    key, _ = create_key(a.engine, "t", tpm=20)  # each request: 3 prompt + 8 completion tokens
    avoid_minute_boundary()
    assert chat(url_a, key) == 200
    # The writer settles the tokens in the shared window (every ledger_flush_s in service). Until then the
    # request's reservation holds the window, and its row is queued just after the response went out: wait for it.
    wait_for_ledger(a, 1)
    assert chat(url_b, key) == 200
    wait_for_ledger(b, 1)
    assert chat(url_a, key) == 429 and chat(url_b, key) == 429


def test_a_row_postgres_would_refuse_does_not_stall_the_ledger(make_gateway, faults, pg_store):
    # PostgreSQL refuses NUL in text and strings longer than their column; such a row used to fail its batch
    # forever, and every row queued behind it.
    from autarky.gateway.ledger import Usage

    gw, url = make_gateway(store=pg_store, require_keys=True, teams={"recorder": {"store_prompts": True}})
    key, _ = create_key(gw.engine, "recorder")
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "small", "messages": [{"role": "user", "content": "a\u0000b"}], "max_tokens": 8}
    assert httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=20).status_code == 200
    gw.ledger.record(Usage("nul-row", time.time(), "chat", 502, error="upstream said \x00", provider="p" * 500))
    assert chat(url, key) == 200
    wait_for_ledger(gw, 3)
    assert gw.ledger.failed_batches == 0
    with gw.engine.connect() as conn:
        row = conn.execute(select(gateway_usage).where(gateway_usage.c.request_id == "nul-row")).one()
    assert row.error == "upstream said \ufffd" and len(row.provider) == 128
