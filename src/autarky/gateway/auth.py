"""Virtual keys (stored only as sha256 hashes), an in-memory key cache, and rate limits and budgets.

Limits run in one of two modes:
- local (SQLite, one replica): counters in memory; spend is persisted by the ledger writer.
- shared (PostgreSQL, many replicas): the database is the shared counter. Admission is one transaction:
  an atomic upsert on the key's per-minute window (`... DO UPDATE ... WHERE requests < rpm AND tokens < tpm
  RETURNING`) and a spend reservation (`UPDATE ... SET reserved = reserved + est WHERE spent + reserved + est
  <= budget RETURNING`); the ledger writer later moves the reservation to actual spend and adds the tokens.
  Cost: one round trip per request for keys that have limits (keys without any skip it entirely).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine, select, text

from autarky.errors import UserError
from autarky.gateway import audit
from autarky.gateway.errors import budget_exceeded, rate_limited
from autarky.store.gateway_tables import gateway_keys

KEY_PREFIX = "sk-ak-"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    team: str
    budget_usd: float | None
    spent_usd: float
    rpm: int | None
    tpm: int | None
    models: tuple[str, ...] | None
    revoked: bool = False

    @property
    def limited(self) -> bool:
        return self.budget_usd is not None or self.rpm is not None or self.tpm is not None


def hash_key(key: str) -> str:
    # Keys are 192 random bits, so a fast unsalted hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def _record(row) -> KeyRecord:  # noqa: ANN001
    return KeyRecord(
        id=row.id, team=row.team, budget_usd=row.budget_usd, spent_usd=row.spent_usd or 0.0, rpm=row.rpm,
        tpm=row.tpm, models=tuple(orjson.loads(row.models)) if row.models else None,
        revoked=row.revoked_at is not None,
    )


def create_key(
    engine: Engine, team: str, *, budget_usd: float | None = None, rpm: int | None = None, tpm: int | None = None,
    models: list[str] | None = None, actor: str = "cli",
) -> tuple[str, KeyRecord]:
    """A new key (returned once, in clear) and its record; only the hash is stored."""
    if not team:
        raise UserError("a key needs a team: pass --team NAME")
    for name, value in (("budget-usd", budget_usd), ("rpm", rpm), ("tpm", tpm)):
        if value is not None and value < 0:
            raise UserError(f"--{name} must be >= 0, got {value}")
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    key_id = "key_" + secrets.token_hex(6)
    row = {"id": key_id, "key_hash": hash_key(key), "prefix": key[:10], "team": team, "budget_usd": budget_usd,
           "spent_usd": 0.0, "reserved_usd": 0.0, "rpm": rpm, "tpm": tpm,
           "models": orjson.dumps(models).decode() if models else None, "created_at": time.time(), "revoked_at": None}
    with engine.begin() as conn:
        conn.execute(gateway_keys.insert().values(**row))
        detail = {"key_id": key_id, "team": team, "budget_usd": budget_usd, "rpm": rpm, "tpm": tpm, "models": models}
        audit.append_in(conn, [(actor, "key.create", detail)])
    return key, KeyRecord(key_id, team, budget_usd, 0.0, rpm, tpm, tuple(models) if models else None)


def list_keys(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(gateway_keys).order_by(gateway_keys.c.created_at)).all()
    return [
        {"id": r.id, "prefix": r.prefix, "team": r.team, "budget_usd": r.budget_usd, "spent_usd": r.spent_usd,
         "reserved_usd": r.reserved_usd, "rpm": r.rpm, "tpm": r.tpm,
         "models": orjson.loads(r.models) if r.models else None, "created_at": r.created_at,
         "revoked": r.revoked_at is not None}
        for r in rows
    ]


def revoke_key(engine: Engine, key_id: str, actor: str = "cli") -> None:
    with engine.begin() as conn:
        done = conn.execute(
            gateway_keys.update().where(gateway_keys.c.id == key_id, gateway_keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        ).rowcount
        if not done:
            raise UserError(f"no active key with id {key_id!r}; `autarky keys list` shows the ids")
        audit.append_in(conn, [(actor, "key.revoke", {"key_id": key_id})])


def lookup_key(engine: Engine, key_hash: str) -> KeyRecord | None:
    with engine.connect() as conn:
        row = conn.execute(select(gateway_keys).where(gateway_keys.c.key_hash == key_hash)).first()
    return _record(row) if row else None


class KeyCache:
    """Key hash -> record for `ttl_s`, misses included, so the hot path rarely touches the database.
    A revocation reaches every replica within the TTL."""

    def __init__(self, engine: Engine, ttl_s: float = 5.0, max_entries: int = 100_000) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, KeyRecord | None]] = {}

    async def get(self, key: str) -> KeyRecord | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        record = await asyncio.to_thread(lookup_key, self.engine, digest)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (now, record)
        return record

    def invalidate(self) -> None:
        self._entries.clear()


def _minute(now: float) -> int:
    return int(now // 60)


def _retry_in(now: float) -> float:
    return 60 - (now % 60)


@dataclass(slots=True)
class Admission:
    reserved_usd: float
    window: int


class Limiter:
    def __init__(self, engine: Engine, shared: bool) -> None:
        self.engine = engine
        self.shared = shared
        self._windows: dict[str, list[int]] = {}  # local: key id -> [minute, requests, tokens]
        self._spend: dict[str, float] = {}  # local: key id -> spent + in flight since the record was loaded

    async def admit(self, key: KeyRecord, estimate_usd: float) -> Admission:
        now = time.time()
        if not key.limited:
            return Admission(0.0, _minute(now))
        if self.shared:
            return await asyncio.to_thread(self._admit_shared, key, estimate_usd, now)
        return self._admit_local(key, estimate_usd, now)

    def _admit_local(self, key: KeyRecord, estimate: float, now: float) -> Admission:
        minute = _minute(now)
        win = self._windows.get(key.id)
        if win is None or win[0] != minute:
            win = self._windows[key.id] = [minute, 0, 0]
        if key.rpm is not None and win[1] >= key.rpm:
            raise rate_limited(f"key {key.id}: {key.rpm} requests per minute exceeded", _retry_in(now))
        if key.tpm is not None and win[2] >= key.tpm:
            raise rate_limited(f"key {key.id}: {key.tpm} tokens per minute exceeded", _retry_in(now),
                               code="token_rate_limit_exceeded")
        if key.budget_usd is not None:
            spent = self._spend.setdefault(key.id, key.spent_usd)
            if spent + estimate > key.budget_usd:
                raise budget_exceeded(f"key {key.id}: budget of ${key.budget_usd:.4f} spent (${spent:.4f} used)")
            self._spend[key.id] = spent + estimate
        win[1] += 1
        return Admission(estimate, minute)

    def settle_local(self, key_id: str, admission: Admission, cost_usd: float, tokens: int) -> None:
        if self.shared:
            return  # the ledger writer settles in the database
        if key_id in self._spend:
            self._spend[key_id] += cost_usd - admission.reserved_usd
        win = self._windows.get(key_id)
        if win is not None and win[0] == admission.window:
            win[2] += tokens

    def _admit_shared(self, key: KeyRecord, estimate: float, now: float) -> Admission:
        minute = _minute(now)
        with self.engine.begin() as conn:
            if key.rpm is not None or key.tpm is not None:
                row = conn.execute(text(
                    "INSERT INTO gateway_rate_windows (key_id, \"window\", requests, tokens) VALUES (:k, :w, 1, 0) "
                    "ON CONFLICT (key_id, \"window\") DO UPDATE SET requests = gateway_rate_windows.requests + 1 "
                    "WHERE gateway_rate_windows.requests < :rpm AND gateway_rate_windows.tokens < :tpm "
                    "RETURNING requests"
                ), {"k": key.id, "w": minute, "rpm": key.rpm if key.rpm is not None else 2**31 - 1,
                    "tpm": key.tpm if key.tpm is not None else 2**62}).first()
                if row is None:
                    raise rate_limited(f"key {key.id}: rate limit ({key.rpm} rpm / {key.tpm} tpm) exceeded",
                                       _retry_in(now))
            if key.budget_usd is not None:
                row = conn.execute(text(
                    "UPDATE gateway_keys SET reserved_usd = reserved_usd + :est "
                    "WHERE id = :k AND revoked_at IS NULL AND spent_usd + reserved_usd + :est <= budget_usd "
                    "RETURNING spent_usd"
                ), {"k": key.id, "est": estimate}).first()
                if row is None:
                    # Raising rolls back the window increment above: a refused request does not count.
                    raise budget_exceeded(f"key {key.id}: budget of ${key.budget_usd:.4f} spent")
        return Admission(estimate if key.budget_usd is not None else 0.0, minute)

