"""A ledger that survives a crash (issue 14): SIGKILL a gateway mid-burst, start it again, and every request
whose client got a success has exactly one ledger row, its spend counted once — on SQLite and PostgreSQL. The
budget reservations of the requests in flight at the kill are released (a crash must not shrink a budget for
good), on PostgreSQL and on SQLite with limits in the store."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from autarky.demo.drill import burst
from autarky.gateway.auth import create_key, list_keys
from autarky.gateway.ledger import STOPPED_ERROR, STOPPED_STATUS
from autarky.gateway.server import free_port, start_gateway_process, wait_for_http
from autarky.store.database import open_store
from autarky.store.gateway_tables import gateway_usage

from .conftest import base_config, merge, to_toml


def kill_mid_burst(tmp_path, store: str, limits: str = "auto") -> tuple[list[tuple[str, int]], list, list[dict]]:
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "autarky.demo.partners", "--port", str(up_port)])
    env = {"AUTARKY_HOME": str(tmp_path / "home")}
    try:
        wait_for_http(f"http://127.0.0.1:{up_port}/v1/models", proc=upstream)
        # A long flush interval: when the kill comes, many acknowledged rows exist only in the writer's batch.
        cfg = merge(base_config(f"http://127.0.0.1:{up_port}", store), {"ledger_flush_s": 3.0, "require_keys": True,
                                                                            "limits": limits})
        (tmp_path / "gw.toml").write_text(to_toml(cfg))
        key, _ = create_key(open_store(store), "t", budget_usd=1000.0, rpm=100_000)
        gateway, url = start_gateway_process(tmp_path / "gw.toml", env=env)
        try:
            report = asyncio.run(burst(url, 400, 16, model="gpt", key=key, midway_after=0.6,
                                       midway=lambda: gateway.send_signal(signal.SIGKILL)))
        finally:
            gateway.kill()
            gateway.wait()
        assert gateway.returncode == -signal.SIGKILL
        again, _ = start_gateway_process(tmp_path / "gw.toml", env=env)  # start-up replays the journal
        again.send_signal(signal.SIGTERM)
        again.wait(60)
    finally:
        upstream.terminate()
        upstream.wait()
    engine = open_store(store)
    with engine.connect() as conn:
        rows = conn.execute(select(gateway_usage)).all()
    return report.results, rows, list_keys(engine)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "sqlite-shared", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_mid_burst_loses_no_acknowledged_row(tmp_path, backend, request):
    store = f"sqlite:///{tmp_path}/crash.db" if backend != "postgres" else request.getfixturevalue("pg_store")
    results, rows, [key] = kill_mid_burst(tmp_path, store, "shared" if backend == "sqlite-shared" else "auto")
    acknowledged = [rid for rid, status in results if status == 200]
    assert len(acknowledged) > 100  # the kill came mid-burst, after many successes
    assert len(acknowledged) < len(results)  # ... and before the end
    counts = collections.Counter(r.request_id for r in rows)
    lost = [rid for rid in acknowledged if counts[rid] == 0]
    assert lost == [], f"{len(lost)} acknowledged requests have no ledger row"
    assert max(counts.values()) == 1
    by_id = {r.request_id: r for r in rows}
    assert all(by_id[rid].status == 200 and by_id[rid].cost_usd > 0 for rid in acknowledged)
    # Spend is settled exactly once per row, replayed rows included.
    assert key["spent_usd"] == pytest.approx(sum(r.cost_usd for r in rows))
    # Requests in flight at the kill (if any: test_reservations.py kills with some surely in flight): their rows
    # say so, cost nothing, and hold no reservation any more.
    stopped = [r for r in rows if r.error == STOPPED_ERROR]
    assert all(r.status == STOPPED_STATUS and r.cost_usd == 0 for r in stopped)
    assert all(r.status != 0 for r in rows)
    assert key["reserved_usd"] == pytest.approx(0.0, abs=1e-9), "a crash left budget reserved for good"
    print(f"\n{backend}: {len(acknowledged)} acknowledged before SIGKILL, {len(rows)} rows ({len(stopped)} in "
          f"flight), 0 lost, reserved after restart ${key['reserved_usd']:.6f}")
