"""The usage ledger: one row per request, none lost under load with faults or on graceful shutdown;
prompts stored only for teams that opt in."""

import asyncio
import collections
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from autarky.demo.drill import burst
from autarky.gateway.auth import create_key
from autarky.gateway.server import free_port, start_gateway_process, wait_for_http
from autarky.store.database import open_store
from autarky.store.gateway_tables import gateway_usage

from .conftest import base_config, merge, to_toml, wait_for_ledger


def ledger_rows(gw):
    with gw.engine.connect() as conn:
        return conn.execute(select(gateway_usage)).all()


def mixed(i: int) -> tuple[str, dict]:
    """Chat, streamed chat and Anthropic messages, in turn."""
    kind = i % 4
    if kind == 3:
        return "/v1/messages", {"model": "task:spreadsheet", "max_tokens": 4,
                                "messages": [{"role": "user", "content": "hi"}]}
    return "/v1/chat/completions", {"model": "task:spreadsheet", "max_tokens": 4,
                                    "messages": [{"role": "user", "content": f"row {i}"}], "stream": kind == 2}


@pytest.mark.slow
def test_load_with_faults_loses_no_ledger_row(tmp_path):
    """5,000 requests at concurrency 100 through a gateway process to an upstream process that faults on
    ~20% of requests; then SIGTERM: every request has exactly one ledger row with the status the client saw."""
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "autarky.demo.partners", "--port", str(up_port),
                                 "--chaos", "0.2", "--seed", "5"])
    try:
        wait_for_http(f"http://127.0.0.1:{up_port}/v1/models", proc=upstream)
        cfg = merge(base_config(f"http://127.0.0.1:{up_port}", f"sqlite:///{tmp_path}/load.db"), {
            "ledger_flush_s": 0.1, "breaker": {"failure_threshold": 1000, "cooldown_s": 0.1},
            "retry": {"max_retries": 1, "backoff_base_s": 0.001, "backoff_max_s": 0.005}})
        (tmp_path / "gw.toml").write_text(to_toml(cfg))
        gateway, url = start_gateway_process(tmp_path / "gw.toml")
        n = 5000
        start = time.monotonic()
        try:
            results = asyncio.run(burst(url, n, 100, request=mixed)).results
        finally:
            elapsed = time.monotonic() - start
            gateway.send_signal(signal.SIGTERM)  # graceful: drain, then flush the ledger
            assert gateway.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    finally:
        upstream.terminate()
        upstream.wait()
    engine = open_store(f"sqlite:///{tmp_path}/load.db")
    with engine.connect() as conn:
        rows = conn.execute(select(gateway_usage)).all()
    statuses = collections.Counter(s for _, s in results)
    print(f"\n{n} requests at concurrency 100 in {elapsed:.1f}s ({n / elapsed:.0f} req/s): {dict(statuses)}")
    assert len(results) == n and all(rid for rid, _ in results)
    assert len(rows) == n
    by_id = {r.request_id: r.status for r in rows}
    assert by_id.keys() == {rid for rid, _ in results}
    assert all(by_id[rid] == status for rid, status in results)
    assert statuses[200] > n * 0.9
    assert sum(r.failovers for r in rows) > 0 and sum(r.retries for r in rows) > 0


def test_graceful_shutdown_finishes_in_flight_requests_and_flushes(make_gateway, faults, upstream_server):
    from autarky.gateway.app import Gateway
    from autarky.gateway.server import ServerThread

    gw, _ = make_gateway()
    gateway = Gateway(gw.config)  # a second gateway on the same store, stopped by hand below
    server = ServerThread(gateway.app, log_level="critical").start()
    faults.default["small-up"] = "latency:0.5"
    statuses: list[int] = []

    def call() -> None:
        r = httpx.post(server.url + "/v1/chat/completions", timeout=20,
                       json={"model": "small", "messages": [{"role": "user", "content": "x"}]})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(faults.calls) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(faults.calls) == 20  # all 20 are now in flight, waiting on the upstream
    server.stop()
    for t in threads:
        t.join()
    assert statuses == [200] * 20
    assert len(ledger_rows(gateway)) == 20 and gateway.ledger.pending == 0


def test_prompts_stored_only_for_opted_in_teams(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    plain, _ = create_key(gw.engine, "product")
    recorder, _ = create_key(gw.engine, "recorder")
    secret = "the quarterly numbers are 42"
    for key, stream in ((plain, False), (plain, True), (recorder, False), (recorder, True)):
        r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": "small", "stream": stream, "messages": [{"role": "user", "content": secret}]})
        assert r.status_code == 200
    wait_for_ledger(gw, 4)
    rows = ledger_rows(gw)
    stored = [r for r in rows if r.content]
    assert len(rows) == 4 and {r.team for r in stored} == {"recorder"} and len(stored) == 2
    assert all(secret in r.content and "small-up" in r.content for r in stored)
    assert all(r.prompt_tokens == 5 and r.completion_tokens == 8 for r in rows)  # streamed ones too
