"""Virtual keys (stored only as sha256 hashes), an in-memory key cache, and rate limits and budgets.

Limits run in one of two modes:
- local (SQLite, one replica): counters in memory; spend is persisted by the ledger writer.
- shared (PostgreSQL, many replicas): the database is the shared counter. Admission is one transaction:
  an atomic upsert on the key's per-minute window (`... DO UPDATE ... WHERE requests < rpm AND tokens < tpm
  RETURNING`) and a spend reservation (`UPDATE ... SET reserved = reserved + est WHERE spent + reserved + est
  <= budget RETURNING`); the ledger writer later moves the reservation to actual spend and adds the tokens.
  Cost: one round trip per request for keys that have limits (keys without any skip it entirely).

Both modes reserve at admission what the request can cost at most (its spend and, for token limits, its tokens)
and settle the reservation to the actual figures afterwards, so concurrent requests cannot all slip under a limit
before any of them is counted: a budget is never overshot (a request is admitted only if its worst case fits),
and a token-per-minute limit by at most one request's worst case (a request is admitted while the window has
room). Local mode holds its counters in this process, so one SQLite store serves one gateway: a second gateway
on the same file is refused (it would count its own limits and overshoot them together); PostgreSQL is the
store for several replicas.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import math
import os
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine, select, text

from autarky.errors import UserError
from autarky.gateway import audit
from autarky.gateway.errors import budget_exceeded, rate_limited
from autarky.gateway.intake import MAX_NAME_CHARS
from autarky.store.gateway_tables import gateway_keys, gateway_reservations

KEY_PREFIX = "sk-ak-"
MAX_TEAM_CHARS = 128  # gateway_keys.team and gateway_usage.team
MAX_KEY_MODELS = 1000


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


def _stored_models(raw: str | None) -> tuple[str, ...] | None:
    """A key's model list as stored; a row that is not a list of strings (written by hand or an old bug)
    allows no model at all rather than crashing or allowing every model."""
    if not raw:
        return None
    try:
        models = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        return ()
    return tuple(models)


def _record(row) -> KeyRecord:  # noqa: ANN001
    return KeyRecord(
        id=row.id, team=row.team, budget_usd=row.budget_usd, spent_usd=row.spent_usd or 0.0, rpm=row.rpm,
        tpm=row.tpm, models=_stored_models(row.models), revoked=row.revoked_at is not None,
    )


def _shown(value: object, limit: int = 60) -> str:
    """A client's value as error messages show it: bounded, since they travel into logs and responses."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _limit_value(name: str, value: object, integer: bool) -> float | int | None:
    """A budget or rate limit as given on the CLI or the admin API: None, or a finite number >= 0 (a whole
    number for rpm and tpm). nan would compare false against everything, which is to say unlimited."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"--{name} must be a number, got {_shown(value)}")
    if not math.isfinite(value):
        raise UserError(f"--{name} must be a finite number, got {value!r}")
    if value < 0:
        raise UserError(f"--{name} must be >= 0, got {value}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise UserError(f"--{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _model_list(models: object) -> list[str] | None:
    if models is None:
        return None
    if (not isinstance(models, (list, tuple)) or len(models) > MAX_KEY_MODELS
            or not all(isinstance(m, str) and m.strip() and len(m) <= MAX_NAME_CHARS for m in models)):
        raise UserError(f"--models must be a list of at most {MAX_KEY_MODELS} model names of at most "
                        f"{MAX_NAME_CHARS} characters, got {_shown(models)}")
    return [m.strip() for m in models]


def create_key(
    engine: Engine, team: str, *, budget_usd: float | None = None, rpm: int | None = None, tpm: int | None = None,
    models: list[str] | None = None, actor: str = "cli", teams: Collection[str] | None = None,
) -> tuple[str, KeyRecord]:
    """A new key (returned once, in clear) and its record; only the hash is stored. `teams`, when given (the
    config's teams), is the set the key's team must belong to."""
    if not isinstance(team, str) or not team.strip():
        raise UserError("a key needs a team: pass --team NAME")
    if len(team) > MAX_TEAM_CHARS:  # the ledger's and the key table's team columns hold this much
        raise UserError(f"--team: at most {MAX_TEAM_CHARS} characters")
    if teams is not None and team not in teams:
        known = ", ".join(sorted(teams)) or "none"
        raise UserError(f"team {_shown(team)} is not in the config's [teams] (known: {known}); add it there first")
    budget_usd = _limit_value("budget-usd", budget_usd, integer=False)
    rpm = _limit_value("rpm", rpm, integer=True)
    tpm = _limit_value("tpm", tpm, integer=True)
    models = _model_list(models)
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
         "models": _listed_models(r.models), "created_at": r.created_at,
         "revoked": r.revoked_at is not None}
        for r in rows
    ]


def _listed_models(raw: str | None) -> list[str] | None:
    models = _stored_models(raw)
    if models == () and raw:
        return [f"<invalid: {raw[:40]}> (allows no model)"]
    return None if models is None else list(models)


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
    reserved_tokens: int = 0


def budget_refusal(key: KeyRecord, spent: float, reserved: float, estimate: float):  # noqa: ANN201
    """The 429 for a budget that cannot take this request, saying what holds it: spend, or requests in flight."""
    budget = key.budget_usd or 0.0
    if spent >= budget:
        why = f"budget of ${budget:.4f} spent (${spent:.4f} used)"
    elif spent + estimate > budget:
        why = (f"this request may cost up to ${estimate:.4f} but only ${budget - spent:.4f} of the budget of "
               f"${budget:.4f} is left (${spent:.4f} spent)")
    else:
        why = (f"budget of ${budget:.4f} is held by requests in flight (${spent:.4f} spent, ${reserved:.4f} "
               f"reserved); this request may cost up to ${estimate:.4f}: retry when they finish")
    return budget_exceeded(f"key {key.id}: {why}")


_SQLITE_CLAIMS: dict[str, int] = {}  # SQLite file -> the lock fd this process holds on it


def claim_local_store(engine: Engine) -> None:
    """One gateway per SQLite store: local limits live in this process, so a second gateway on the same file
    would count its own and both would overshoot. The lock is an flock, released when this process exits."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = os.path.realpath(url.database)
    if path in _SQLITE_CLAIMS:
        return
    fd = os.open(path + ".gateway-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"another gateway is already running on the SQLite store {path}: with SQLite each gateway counts rate "
            "limits and budgets in its own memory, so two of them would overshoot both; run one gateway per SQLite "
            "file, or point every replica at PostgreSQL (store = \"postgresql://...\"), which shares the counters"
        ) from None
    _SQLITE_CLAIMS[path] = fd


class Limiter:
    def __init__(self, engine: Engine, shared: bool) -> None:
        self.engine = engine
        self.shared = shared
        self._windows: dict[str, list[int]] = {}  # local: key id -> [minute, requests, tokens incl. reserved]
        self._spend: dict[str, float] = {}  # local: key id -> spent since the record was loaded (settled)
        self._reserved: dict[str, float] = {}  # local: key id -> reserved by requests in flight
        if not shared:
            claim_local_store(engine)

    async def admit(self, key: KeyRecord, estimate_usd: float, estimate_tokens: int = 0,
                    request_id: str | None = None) -> Admission:
        """Check the limits and reserve; in shared mode the budget reservation is a row under `request_id`."""
        now = time.time()
        if not key.limited:
            return Admission(0.0, _minute(now))
        if self.shared:
            return await asyncio.to_thread(self._admit_shared, key, estimate_usd, estimate_tokens, now,
                                           request_id or secrets.token_hex(12))
        return self._admit_local(key, estimate_usd, estimate_tokens, now)

    def _admit_local(self, key: KeyRecord, estimate: float, tokens: int, now: float) -> Admission:
        # Synchronous on the event loop: check-and-reserve is atomic against other requests of this process.
        minute = _minute(now)
        win = self._windows.get(key.id)
        if win is None or win[0] != minute:
            win = self._windows[key.id] = [minute, 0, 0]
        if key.rpm is not None and win[1] >= key.rpm:
            raise rate_limited(f"key {key.id}: {key.rpm} requests per minute exceeded", _retry_in(now))
        if key.tpm is not None and win[2] >= key.tpm:
            raise rate_limited(f"key {key.id}: {key.tpm} tokens per minute exceeded (counting requests in flight "
                               "at their max_tokens)", _retry_in(now), code="token_rate_limit_exceeded")
        reserved = 0.0
        if key.budget_usd is not None:
            spent = self._spend.setdefault(key.id, key.spent_usd)
            held = self._reserved.get(key.id, 0.0)
            if spent + held + estimate > key.budget_usd:
                raise budget_refusal(key, spent, held, estimate)
            self._reserved[key.id] = held + estimate
            reserved = estimate
        held_tokens = tokens if key.tpm is not None else 0
        win[1] += 1
        win[2] += held_tokens
        return Admission(reserved, minute, held_tokens)

    def settle_local(self, key_id: str, admission: Admission, cost_usd: float, tokens: int) -> None:
        if self.shared:
            return  # the ledger writer settles in the database
        if key_id in self._spend:
            self._spend[key_id] += cost_usd
            self._reserved[key_id] = max(0.0, self._reserved.get(key_id, 0.0) - admission.reserved_usd)
        win = self._windows.get(key_id)
        if win is not None and win[0] == admission.window:
            win[2] += tokens - admission.reserved_tokens

    def _admit_shared(self, key: KeyRecord, estimate: float, tokens: int, now: float,  # noqa: PLR0913
                      request_id: str) -> Admission:
        minute = _minute(now)
        held_tokens = tokens if key.tpm is not None else 0
        with self.engine.begin() as conn:
            if key.rpm is not None or key.tpm is not None:
                # The token reservation is taken with the request; the ledger writer settles it to the actual.
                row = conn.execute(text(
                    "INSERT INTO gateway_rate_windows (key_id, \"window\", requests, tokens) VALUES (:k, :w, 1, :t) "
                    "ON CONFLICT (key_id, \"window\") DO UPDATE SET requests = gateway_rate_windows.requests + 1, "
                    "tokens = gateway_rate_windows.tokens + :t "
                    "WHERE gateway_rate_windows.requests < :rpm AND gateway_rate_windows.tokens < :tpm "
                    "RETURNING requests"
                ), {"k": key.id, "w": minute, "t": held_tokens, "rpm": key.rpm if key.rpm is not None else 2**31 - 1,
                    "tpm": key.tpm if key.tpm is not None else 2**62}).first()
                if row is None:
                    used = conn.execute(text(
                        "SELECT requests, tokens FROM gateway_rate_windows WHERE key_id = :k AND \"window\" = :w"
                    ), {"k": key.id, "w": minute}).first()
                    if key.tpm is not None and used is not None and used.tokens >= key.tpm:
                        raise rate_limited(f"key {key.id}: {key.tpm} tokens per minute exceeded (counting requests "
                                           "in flight at their max_tokens)", _retry_in(now),
                                           code="token_rate_limit_exceeded")
                    raise rate_limited(f"key {key.id}: {key.rpm} requests per minute exceeded", _retry_in(now))
            if key.budget_usd is not None:
                row = conn.execute(text(
                    "UPDATE gateway_keys SET reserved_usd = reserved_usd + :est "
                    "WHERE id = :k AND revoked_at IS NULL AND spent_usd + reserved_usd + :est <= budget_usd "
                    "RETURNING spent_usd"
                ), {"k": key.id, "est": estimate}).first()
                if row is None:
                    now_row = conn.execute(select(gateway_keys.c.spent_usd, gateway_keys.c.reserved_usd)
                                           .where(gateway_keys.c.id == key.id)).first()
                    spent, held = (now_row.spent_usd or 0.0, now_row.reserved_usd or 0.0) if now_row else (0.0, 0.0)
                    # Raising rolls back the window increment above: a refused request does not count.
                    raise budget_refusal(key, spent, held, estimate)
                # In the same transaction: the reservation exists exactly when its row does (ledger.Ledger
                # releases it by deleting the row, after a crash too).
                conn.execute(gateway_reservations.insert(), {"request_id": request_id, "key_id": key.id,
                                                             "usd": estimate, "created_at": now})
        return Admission(estimate if key.budget_usd is not None else 0.0, minute, held_tokens)
