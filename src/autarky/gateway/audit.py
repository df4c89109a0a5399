"""Append-only, hash-chained audit log of admin actions and policy decisions.

Each row's hash covers its own fields and the previous row's hash, and rows are numbered seq = previous + 1.
Editing a row breaks its hash; inserting or deleting one breaks the chain or the numbering; `verify` reports
each. (Truncating the tail leaves a valid shorter chain: keep `autarky audit verify` output or the head hash
elsewhere if that matters.) Concurrent writers, across replicas too, are serialised by the seq primary key:
a writer that loses the race retries on the new head; PostgreSQL also takes an advisory lock to avoid the retry.

A plain hash chain can be rebuilt end to end by someone with write access to the database. Set
AUTARKY_AUDIT_KEY (on every gateway, and when verifying) to make each hash an HMAC that they cannot forge.
A chain is extended only under the setting its last row was written with: a gateway or `keys` command started
without the key (or with another one) refuses, rather than silently appending rows nobody can verify.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from datetime import UTC, datetime

import orjson
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import IntegrityError

from autarky.errors import UserError
from autarky.store.gateway_tables import gateway_audit

GENESIS = "0" * 64
AUDIT_KEY_ENV = "AUTARKY_AUDIT_KEY"
_PG_LOCK_ID = 0x61757464  # "autd"


def canonical(detail: dict) -> str:
    return orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode()


def row_hash(seq: int, ts: str, actor: str, action: str, detail: str, prev_hash: str) -> str:
    payload = orjson.dumps([seq, ts, actor, action, detail, prev_hash])
    secret = os.environ.get(AUDIT_KEY_ENV)
    if secret:
        return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return hashlib.sha256(payload).hexdigest()


class AuditKeyMismatch(UserError):
    """The chain's last row was not written under this process's AUTARKY_AUDIT_KEY setting."""


def _check_head(head) -> None:  # noqa: ANN001 (a Row of gateway_audit)
    if head is None or row_hash(head.seq, head.ts, head.actor, head.action, head.detail, head.prev_hash) == head.hash:
        return
    have = "is set" if os.environ.get(AUDIT_KEY_ENV) else "is not set"
    raise AuditKeyMismatch(
        f"the audit chain's last row (seq {head.seq}) does not verify with this process's {AUDIT_KEY_ENV} (it "
        f"{have}): it was written with another key setting, or edited; set {AUDIT_KEY_ENV} as the gateways that "
        "wrote it had it, or run `autarky audit verify`. Refusing to extend the chain.")


def _head(conn: Connection):  # noqa: ANN202
    return conn.execute(select(gateway_audit).order_by(gateway_audit.c.seq.desc()).limit(1)).first()


def check_key(engine: Engine) -> None:
    """UserError unless this process may extend the chain (its last row verifies under our key setting)."""
    with engine.connect() as conn:
        _check_head(_head(conn))


def append_in(conn: Connection, entries: list[tuple[str, str, dict]]) -> int:
    """Append (actor, action, detail) entries inside an open transaction; returns the last seq."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
    head = _head(conn)
    _check_head(head)
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
    rows = []
    for actor, action, detail in entries:
        seq += 1
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        body = canonical(detail)
        digest = row_hash(seq, ts, actor, action, body, prev)
        rows.append({"seq": seq, "ts": ts, "actor": actor, "action": action, "detail": body,
                     "prev_hash": prev, "hash": digest})
        prev = digest
    if rows:
        conn.execute(gateway_audit.insert(), rows)
    return seq


def append(engine: Engine, actor: str, action: str, detail: dict, attempts: int = 20) -> int:
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return append_in(conn, [(actor, action, detail)])
        except IntegrityError:  # another writer took this seq; retry on the new head
            time.sleep(0.005 * (attempt + 1))
    raise RuntimeError("audit append kept conflicting with other writers")


def verify(engine: Engine) -> tuple[int, list[str]]:
    """(rows checked, problems); an empty problem list means the chain is intact."""
    problems: list[str] = []
    expected_seq, prev = 1, GENESIS
    count = 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=2000).execute(select(gateway_audit).order_by(gateway_audit.c.seq))
        for row in result:
            count += 1
            if row.seq != expected_seq:
                if row.seq > expected_seq:
                    missing = f"{expected_seq}" if row.seq == expected_seq + 1 else f"{expected_seq}..{row.seq - 1}"
                    problems.append(f"seq {missing}: row(s) deleted")
                else:
                    problems.append(f"seq {row.seq}: out of order (row inserted)")
            if row.prev_hash != prev:
                problems.append(f"seq {row.seq}: prev_hash does not match the previous row (row inserted or deleted)")
            if row_hash(row.seq, row.ts, row.actor, row.action, row.detail, row.prev_hash) != row.hash:
                problems.append(f"seq {row.seq}: contents do not match its hash (row edited)")
            expected_seq, prev = row.seq + 1, row.hash
    return count, problems


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(gateway_audit)).scalar_one()
