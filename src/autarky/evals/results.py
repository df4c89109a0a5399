"""Reading eval results back from the store: the leaderboard (per model per suite, with CIs, cost and latency)
and paired comparisons. The report, the routing table and the CLI all read through here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from autarky.evals.stats import ALPHA, PairedComparison, bootstrap_mean_ci, paired_comparison
from autarky.store.eval_tables import eval_models, eval_results, eval_suites


@dataclass
class SuiteScore:
    model: str
    suite: str
    task: str
    metric: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p50_latency_ms: float
    tokens: int
    cost_usd: float
    usd_per_1k_tokens: float
    in_house: bool
    failures: int  # items with a request or grader error (scored 0)
    extra: dict[str, float] = field(default_factory=dict)  # means of secondary metrics, e.g. bits_per_byte
    # Share of items whose output is in the requested format (schema-valid JSON, a valid call of a declared
    # tool), apart from the task score; None for suites that ask for no format.
    format_valid: float | None = None


def load_results(engine: Engine, models: list[str] | None = None, suites: list[str] | None = None,
                 ok_only: bool = True) -> list[dict[str, Any]]:
    query = select(eval_results)
    if ok_only:
        query = query.where(eval_results.c.status == "ok")
    if models:
        query = query.where(eval_results.c.model.in_(models))
    if suites:
        query = query.where(eval_results.c.suite.in_(suites))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query.order_by(eval_results.c.suite, eval_results.c.item_id))]


def stored_models(engine: Engine) -> dict[str, dict[str, Any]]:
    """The models the store has results for, by name: provider, list prices, in-house flag."""
    with engine.connect() as conn:
        return {r.name: dict(r._mapping) for r in conn.execute(select(eval_models))}


def suite_info(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r.name: dict(r._mapping) for r in conn.execute(select(eval_suites))}


def blended_usd_per_1k(info: dict[str, Any] | None, cost_usd: float, tokens: int) -> float:
    """Dollars per 1k tokens as actually spent on the suite; the list-price midpoint when no tokens were counted."""
    if tokens > 0:
        return cost_usd / tokens * 1000
    if info is None:
        return 0.0
    return (info["usd_in_per_1m"] + info["usd_out_per_1m"]) / 2 / 1000


def leaderboard(engine: Engine, models: list[str] | None = None, suites: list[str] | None = None) -> list[SuiteScore]:
    """One row per (model, suite) with results, sorted by suite then mean score descending."""
    infos, sinfo = stored_models(engine), suite_info(engine)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in load_results(engine, models, suites):
        groups[(row["model"], row["suite"])].append(row)
    board = []
    for (model, suite), rows in groups.items():
        meta = sinfo.get(suite, {"task": suite, "metric": "score", "kind": "generate"})
        if meta["kind"] == "pairwise":
            continue
        ci = bootstrap_mean_ci([r["score"] for r in rows])
        tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
        cost = sum(r["cost_usd"] for r in rows)
        extras: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            for key, value in json.loads(r["metrics"] or "{}").items():
                extras[key].append(float(value))
        info = infos.get(model)
        valid = extras.pop("format_valid", None)
        board.append(SuiteScore(
            model=model, suite=suite, task=meta["task"], metric=meta["metric"], n=ci.n, mean=ci.mean,
            ci_low=ci.ci_low, ci_high=ci.ci_high,
            p50_latency_ms=float(np.median([r["latency_ms"] for r in rows])), tokens=tokens, cost_usd=cost,
            usd_per_1k_tokens=blended_usd_per_1k(info, cost, tokens), in_house=bool(info and info["in_house"]),
            failures=sum(1 for r in rows if r["error"]),
            extra={k: float(np.mean(v)) for k, v in extras.items()},
            format_valid=float(np.mean(valid)) if valid else None,
        ))
    board.sort(key=lambda s: (s.suite, -s.mean, s.model))
    return board


def compare(engine: Engine, model_a: str, model_b: str, suite: str | list[str],
            alpha: float = ALPHA) -> PairedComparison:
    """Paired comparison of two models on the items both have finished in `suite` (or in any of several suites:
    an item is then a (suite, item) pair): McNemar on pass/fail scores, the paired bootstrap otherwise."""
    suites = [suite] if isinstance(suite, str) else list(suite)
    rows = load_results(engine, [model_a, model_b], suites)
    by_model: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    for r in rows:
        by_model[r["model"]][(r["suite"], r["item_id"])] = r["score"]
    shared = sorted(set(by_model[model_a]) & set(by_model[model_b]))
    return paired_comparison([by_model[model_a][i] for i in shared], [by_model[model_b][i] for i in shared],
                             alpha=alpha)
