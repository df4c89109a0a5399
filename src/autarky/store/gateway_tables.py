"""Gateway tables: virtual keys, per-minute rate windows, the usage ledger and the hash-chained audit log."""

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text

from autarky.store.database import metadata

gateway_keys = Table(
    "gateway_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 hex; the key itself is never stored
    Column("prefix", String(16), nullable=False),  # shown in listings so people can tell keys apart
    Column("team", String(128), nullable=False),
    Column("budget_usd", Float, nullable=True),
    Column("spent_usd", Float, nullable=False, default=0.0),
    Column("reserved_usd", Float, nullable=False, default=0.0),  # in-flight reservations (shared limits)
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("models", Text, nullable=True),  # JSON list, or NULL for every model the team may use
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

gateway_rate_windows = Table(
    "gateway_rate_windows",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("window", Integer, primary_key=True),  # epoch minute
    Column("requests", Integer, nullable=False, default=0),
    Column("tokens", Integer, nullable=False, default=0),
)

# One row per budget reservation held in the store (shared limits), by request: settling or releasing deletes
# the row and subtracts exactly what it held, so a reservation is released once, whoever releases it (the
# gateway that took it, the start-up after a crash, or the expiry sweep).
gateway_reservations = Table(
    "gateway_reservations",
    metadata,
    Column("request_id", String(40), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("usd", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)

gateway_usage = Table(
    "gateway_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(40), nullable=False, unique=True),
    Column("ts", Float, nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("team", String(128), nullable=True),
    Column("task", String(128), nullable=True),
    Column("model", String(256), nullable=True),
    Column("provider", String(128), nullable=True),
    Column("endpoint", String(32), nullable=False),
    Column("stream", Boolean, nullable=False, default=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("status", Integer, nullable=False),
    Column("retries", Integer, nullable=False, default=0),
    Column("failovers", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("content", Text, nullable=True),  # prompt + completion JSON, only for teams that opted in
)
Index("ix_gateway_usage_key_ts", gateway_usage.c.key_id, gateway_usage.c.ts)

gateway_audit = Table(
    "gateway_audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),  # assigned as previous + 1 under a lock
    Column("ts", String(40), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("detail", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
