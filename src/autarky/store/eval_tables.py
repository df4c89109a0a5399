"""Tables of the eval stage: suites seen, models evaluated (price, in-house flag) and one row per graded item.

A result row is unique per (model, suite, item_id): that uniqueness is what makes `eval run` resumable, since
an interrupted run re-reads the finished keys and only sends the rest. Rows with status "error" (the endpoint
failed after retries) are retried by the next run; rows with status "ok" are final, including items whose
grader crashed (score 0, the crash in `error`).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Float, Integer, String, Table, Text, UniqueConstraint

from autarky.store.database import metadata

eval_suites = Table(
    "eval_suites",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("task", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("grader", String(64), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("source", Text, nullable=False, default=""),
)

eval_models = Table(
    "eval_models",
    metadata,
    Column("name", String(256), primary_key=True),
    Column("base_url", Text, nullable=False, default=""),
    Column("provider", String(128), nullable=False, default=""),
    Column("in_house", Boolean, nullable=False, default=False),
    Column("usd_in_per_1m", Float, nullable=False, default=0.0),
    Column("usd_out_per_1m", Float, nullable=False, default=0.0),
    Column("updated_at", DateTime(timezone=True)),
)

eval_results = Table(
    "eval_results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(256), nullable=False),
    Column("suite", String(128), nullable=False),
    Column("item_id", String(256), nullable=False),
    Column("item_sha", String(64), nullable=False, default=""),  # the item as graded; an edited item is redone
    Column("status", String(16), nullable=False),  # ok | error
    Column("score", Float, nullable=False, default=0.0),
    Column("metrics", Text, nullable=False, default="{}"),  # JSON: secondary metrics (e.g. bits_per_byte)
    Column("prompt", Text, nullable=False, default=""),
    Column("output", Text, nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),  # the grader's note (e.g. the formula's value)
    Column("error", Text, nullable=False, default=""),  # request failure or grader crash
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("created_at", DateTime(timezone=True)),
    UniqueConstraint("model", "suite", "item_id", name="uq_eval_results_key"),
)
