"""The routing table the gateway follows: per product task, candidates ranked by eval score, with the CI, price and
p50 latency that justify the order, plus the cost–quality Pareto front.

Policy, made explicit:
- `max_usd_per_1k`: candidates costing more per 1k tokens are left out;
- `prefer_in_house_within` (percentage points of score, since scores are in [0, 1]): when the best in-house model
  scores within that margin of the best model, it is moved to the top — self-sufficiency at a stated price.
A task measured by several suites scores each model by the mean of its suite means (and of their CI bounds).
The evidence for the order is written with it: each candidate's paired p-value against the next one (items of all
the task's suites that both models finished) and the in-house margin. The file format is
`autarky.contracts.routes`, the one schema the gateway reads back.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from autarky.contracts.routes import Candidate, RoutingTable, TaskRoute, write_routing_table
from autarky.evals.results import SuiteScore, compare

__all__ = ["Candidate", "TaskRoute", "build_routes", "paired_p_values", "pareto_front", "routes_toml", "write_routes"]

# (task, model a, model b) -> two-sided paired p-value of a's score against b's, None without shared items
PairedP = Callable[[str, str, str], float | None]


def pareto_front(candidates: list[Candidate]) -> list[str]:
    """Models no other model beats on both cost (lower) and score (higher); cheapest first."""
    front = []
    for c in candidates:
        dominated = any(
            o.usd_per_1k_tokens <= c.usd_per_1k_tokens and o.score >= c.score
            and (o.usd_per_1k_tokens < c.usd_per_1k_tokens or o.score > c.score)
            for o in candidates if o is not c
        )
        if not dominated:
            front.append(c)
    return [c.model for c in sorted(front, key=lambda c: (c.usd_per_1k_tokens, -c.score, c.model))]


def _round(value: float, digits: int = 6) -> float:
    """Six decimals keep the file readable; nan (unmeasured) stays nan."""
    return round(float(value), digits) if math.isfinite(value) else float(value)


def paired_p_values(engine: Engine, board: list[SuiteScore]) -> PairedP:
    """Paired bootstrap p-values from the store, on the items of all the task's suites both models finished."""
    suites: dict[str, list[str]] = defaultdict(list)
    for row in board:
        if row.suite not in suites[row.task]:
            suites[row.task].append(row.suite)

    def p_value(task: str, a: str, b: str) -> float | None:
        result = compare(engine, a, b, suites[task])
        return float(f"{result.p_bootstrap:.3g}") if result.n else None

    return p_value


def build_routes(board: list[SuiteScore], providers: dict[str, str] | None = None,
                 prefer_in_house_within: float | None = None, max_usd_per_1k: float | None = None,
                 paired: PairedP | None = None) -> list[TaskRoute]:
    providers = providers or {}
    per_task: dict[str, dict[str, list[SuiteScore]]] = defaultdict(lambda: defaultdict(list))
    for row in board:
        per_task[row.task][row.model].append(row)
    routes = []
    for task in sorted(per_task):
        candidates = []
        for model, rows in per_task[task].items():
            candidates.append(Candidate(
                model=model, provider=providers.get(model, ""),
                score=_round(np.mean([r.mean for r in rows])), ci_low=_round(np.mean([r.ci_low for r in rows])),
                ci_high=_round(np.mean([r.ci_high for r in rows])),
                usd_per_1k_tokens=_round(np.mean([r.usd_per_1k_tokens for r in rows])),
                p50_latency_ms=_round(np.mean([r.p50_latency_ms for r in rows])),
                in_house=all(r.in_house for r in rows),
            ))
        notes = []
        if max_usd_per_1k is not None:
            dropped = [c.model for c in candidates if c.usd_per_1k_tokens > max_usd_per_1k]
            candidates = [c for c in candidates if c.usd_per_1k_tokens <= max_usd_per_1k]
            if dropped:
                notes.append(f"over ${max_usd_per_1k}/1k tokens, left out: {', '.join(sorted(dropped))}")
        candidates.sort(key=lambda c: (-c.score, c.usd_per_1k_tokens, c.model))
        if prefer_in_house_within is not None and candidates and not candidates[0].in_house:
            best = candidates[0].score
            in_house = [c for c in candidates if c.in_house and c.score >= best - prefer_in_house_within / 100]
            if in_house:
                chosen = in_house[0]
                margin = (best - chosen.score) * 100
                candidates.remove(chosen)
                candidates.insert(0, chosen.model_copy(update={"in_house_margin": _round(margin, 3)}))
                notes.append(f"in-house {chosen.model} preferred: {margin:.1f} points below the "
                             f"best, within {prefer_in_house_within:g}")
        if paired is not None:
            candidates = [c.model_copy(update={"p_vs_next": paired(task, c.model, nxt.model)})
                          for c, nxt in zip(candidates, candidates[1:], strict=False)] + candidates[-1:]
        routes.append(TaskRoute(task=task, candidates=candidates, pareto=pareto_front(candidates), notes=notes))
    return routes


def routes_toml(routes: list[TaskRoute], generated_at: datetime | None = None) -> str:
    return RoutingTable.of(routes, generated_at).to_toml()


def write_routes(routes: list[TaskRoute], path: str | Path) -> Path:
    """Write atomically (the gateway hot-reloads the file and must never see half of it)."""
    return write_routing_table(RoutingTable.of(routes), path)
