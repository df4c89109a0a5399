"""The audit chain: admin actions and policy decisions are appended; tampering by raw SQL is detected."""

import httpx
from sqlalchemy import text
from typer.testing import CliRunner

from autarky.cli import app
from autarky.gateway import audit
from autarky.gateway.auth import create_key, revoke_key
from autarky.store.database import open_store


def fill(engine, n: int = 6) -> None:
    for i in range(n):
        _, rec = create_key(engine, f"team{i}")
        if i % 2:
            revoke_key(engine, rec.id)


def test_intact_chain_verifies(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path}/a.db")
    fill(engine)
    rows, problems = audit.verify(engine)
    assert rows == 9 and problems == []


def test_edit_insert_delete_are_each_reported(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path}/a.db")
    fill(engine)
    with engine.begin() as conn:  # edit: give team2 a budget after the fact
        conn.execute(text("UPDATE gateway_audit SET detail = replace(detail, :old, :new) WHERE seq = 4"),
                     {"old": '"budget_usd":null', "new": '"budget_usd":999'})
    _, problems = audit.verify(engine)
    assert problems == ["seq 4: contents do not match its hash (row edited)"]

    engine = open_store(f"sqlite:///{tmp_path}/b.db")
    fill(engine)
    with engine.begin() as conn:  # delete a row in the middle
        conn.execute(text("DELETE FROM gateway_audit WHERE seq = 5"))
    _, problems = audit.verify(engine)
    assert problems == ["seq 5: row(s) deleted",
                        "seq 6: prev_hash does not match the previous row (row inserted or deleted)"]

    engine = open_store(f"sqlite:///{tmp_path}/c.db")
    fill(engine)
    with engine.begin() as conn:  # insert a forged row after seq 4, with a hash that is right for its fields
        prev = conn.execute(text("SELECT hash FROM gateway_audit WHERE seq = 4")).scalar_one()
        for seq in range(9, 4, -1):
            conn.execute(text("UPDATE gateway_audit SET seq = seq + 1 WHERE seq = :s"), {"s": seq})
        ts = "2026-01-01T00:00:00+00:00"
        forged = audit.row_hash(5, ts, "mallory", "key.create", "{}", prev)
        conn.execute(text("INSERT INTO gateway_audit VALUES (5, :ts, 'mallory', 'key.create', '{}', :p, :h)"),
                     {"ts": ts, "p": prev, "h": forged})
    _, problems = audit.verify(engine)
    # the row after the forgery no longer links, and every renumbered row no longer matches its hash
    assert problems[0] == "seq 6: prev_hash does not match the previous row (row inserted or deleted)"
    assert problems[1:] == [f"seq {s}: contents do not match its hash (row edited)" for s in range(6, 11)]


def test_with_an_audit_key_a_rebuilt_chain_is_still_caught(tmp_path, monkeypatch):
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "secret-only-the-gateways-know")
    engine = open_store(f"sqlite:///{tmp_path}/k.db")
    fill(engine, 2)
    assert audit.verify(engine)[1] == []
    monkeypatch.delenv(audit.AUDIT_KEY_ENV)  # an attacker without the key rebuilds every hash
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT seq, ts, actor, action, detail FROM gateway_audit ORDER BY seq")).all()
        prev = audit.GENESIS
        for r in rows:
            h = audit.row_hash(r.seq, r.ts, "mallory", r.action, r.detail, prev)
            conn.execute(text("UPDATE gateway_audit SET actor='mallory', prev_hash=:p, hash=:h WHERE seq=:s"),
                         {"p": prev, "h": h, "s": r.seq})
            prev = h
    assert audit.verify(engine)[1] == []  # without the key the rebuilt chain looks fine...
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "secret-only-the-gateways-know")
    assert len(audit.verify(engine)[1]) == 3  # ...with it, every rewritten row is caught


def test_cli_verify_exit_codes(tmp_path):
    store = f"sqlite:///{tmp_path}/a.db"
    engine = open_store(store)
    fill(engine, 3)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--store", store])
    assert ok.exit_code == 0 and "audit chain OK: 4 rows" in ok.stdout
    with engine.begin() as conn:
        conn.execute(text("UPDATE gateway_audit SET actor = 'someone-else' WHERE seq = 2"))
    bad = runner.invoke(app, ["audit", "verify", "--store", store])
    assert bad.exit_code == 1 and "TAMPERED seq 2" in bad.stdout


def test_policy_denials_and_admin_actions_are_audited(make_gateway, faults):
    from .conftest import MASTER

    gw, url = make_gateway(require_keys=False)
    httpx.post(url + "/admin/keys", json={"team": "secure"}, headers={"authorization": f"Bearer {MASTER}"})
    r = httpx.post(url + "/v1/chat/completions", headers={"x-autarky-task": "spreadsheet"},
                   json={"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    r = httpx.post(url + "/v1/chat/completions", headers={"x-autarky-data-class": "restricted"},
                   json={"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 403
    gw.ledger.flush()
    with gw.engine.connect() as conn:
        actions = [r[0] for r in conn.execute(text("SELECT action FROM gateway_audit ORDER BY seq"))]
    assert actions == ["key.create", "policy.deny"]
    verified = httpx.get(url + "/admin/audit/verify", headers={"authorization": f"Bearer {MASTER}"}).json()
    assert verified == {"rows": 2, "ok": True, "problems": []}


def test_a_changed_audit_key_holds_audit_entries_back_but_never_the_usage_rows(tmp_path, monkeypatch):
    """The chain refuses to be extended under another key; the ledger's writer keeps writing usage rows (and
    keeps the audit entries queued) instead of dying with the error."""
    from autarky.gateway.ledger import Ledger, Usage

    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "the-old-secret")
    engine = open_store(f"sqlite:///{tmp_path}/store.db")
    fill(engine, 2)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM gateway_audit")).scalar()
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "another-secret")
    ledger = Ledger(engine)
    ledger.record(Usage(request_id="r1", ts=0.0, endpoint="chat", status=200))
    ledger.audit("admin", "key.create", {"team": "t"})
    assert ledger.flush()
    assert ledger.written == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM gateway_usage")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM gateway_audit")).scalar() == before
    assert ledger.pending == 1  # the audit entry waits for the right key
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "the-old-secret")
    assert ledger.flush() and ledger.pending == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM gateway_audit")).scalar() == before + 1
