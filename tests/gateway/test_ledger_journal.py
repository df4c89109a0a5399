"""The ledger journal: replay is idempotent by request id, tolerates a torn last line, leaves live segments
alone, and a closed or drained ledger leaves no file behind."""

from __future__ import annotations

import shutil

from sqlalchemy import select

from autarky.gateway.journal import journal_dir
from autarky.gateway.ledger import Ledger, Usage
from autarky.store.database import open_store
from autarky.store.gateway_tables import gateway_usage


def usage(i: int) -> Usage:
    return Usage(request_id=f"r{i}", ts=1.0, endpoint="chat", status=200, key_id=None, prompt_tokens=3,
                 completion_tokens=5, cost_usd=0.01)


def ids(engine) -> list[str]:  # noqa: ANN001
    with engine.connect() as conn:
        return sorted(conn.execute(select(gateway_usage.c.request_id)).scalars())


def test_replay_is_idempotent_and_survives_a_torn_line(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTARKY_HOME", str(tmp_path / "home"))
    engine = open_store(f"sqlite:///{tmp_path}/j.db")
    crashed = Ledger(engine)
    crashed.record(usage(0))
    assert crashed.flush() and not list(journal_dir(engine).glob("*.jsonl"))  # written: its segment is gone
    for i in range(1, 5):
        crashed.record(usage(i))  # r1..r4: in the writer's queue and the journal only
    crashed.checkpoint(usage(0))  # a row the database already has, journaled again
    [segment] = list(journal_dir(engine).glob("*.jsonl"))
    with open(segment, "ab") as f:
        f.write(b'{"request_id": "r9", "ts": 1.0, "endpo')  # the write the kill interrupted
    orphan = tmp_path / "orphan.jsonl"
    shutil.copy(segment, orphan)
    crashed.journal.close()  # what a kill does to its lock; the file stays (rows pending)
    assert segment.exists()

    alive = Ledger(engine)  # a gateway still running on the same store: its segment is locked
    alive.record(usage(7))
    restarted = Ledger(engine)
    restarted.start()
    restarted.close()
    assert ids(engine) == ["r0", "r1", "r2", "r3", "r4"] and not segment.exists()
    shutil.copy(orphan, segment)  # the same journal again: nothing doubles
    again = Ledger(engine)
    again.start()
    again.close()
    assert ids(engine) == ["r0", "r1", "r2", "r3", "r4"]
    alive.close()
    assert ids(engine) == ["r0", "r1", "r2", "r3", "r4", "r7"]
    assert not journal_dir(engine).exists()  # drained and closed: no file, no folder


def test_an_in_memory_store_has_no_journal():
    assert journal_dir(open_store("sqlite://")) is None
