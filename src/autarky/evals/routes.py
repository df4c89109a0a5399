"""The routing table the gateway follows: per product task, candidates ranked by eval score, with the CI, price and
p50 latency that justify the order, plus the cost–quality Pareto front.

Policy, made explicit:
- `max_usd_per_1k`: candidates costing more per 1k tokens are left out;
- `prefer_in_house_within` (percentage points of score, since scores are in [0, 1]): when the best in-house model
  scores within that margin of the best model, it is moved to the top — self-sufficiency at a stated price.
A task measured by several suites scores each model by the mean of its suite means (and of their CI bounds).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from autarky.evals.results import SuiteScore


@dataclass
class Candidate:
    model: str
    provider: str
    score: float
    ci_low: float
    ci_high: float
    usd_per_1k_tokens: float
    p50_latency_ms: float
    in_house: bool


@dataclass
class TaskRoute:
    task: str
    candidates: list[Candidate]
    pareto: list[str]
    notes: list[str] = field(default_factory=list)


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


def build_routes(board: list[SuiteScore], providers: dict[str, str] | None = None,
                 prefer_in_house_within: float | None = None, max_usd_per_1k: float | None = None) -> list[TaskRoute]:
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
                score=float(np.mean([r.mean for r in rows])), ci_low=float(np.mean([r.ci_low for r in rows])),
                ci_high=float(np.mean([r.ci_high for r in rows])),
                usd_per_1k_tokens=float(np.mean([r.usd_per_1k_tokens for r in rows])),
                p50_latency_ms=float(np.mean([r.p50_latency_ms for r in rows])), in_house=all(r.in_house for r in rows),
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
                candidates.remove(chosen)
                candidates.insert(0, chosen)
                notes.append(f"in-house {chosen.model} preferred: {(best - chosen.score) * 100:.1f} points below the "
                             f"best, within {prefer_in_house_within:g}")
        routes.append(TaskRoute(task, candidates, pareto_front(candidates), notes))
    return routes


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _float(value: float) -> str:
    return repr(round(float(value), 6)) if np.isfinite(value) else "nan"


def routes_toml(routes: list[TaskRoute], generated_at: datetime | None = None) -> str:
    stamp = (generated_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = ["# written by `autarky eval routes`; read by the gateway", f'generated_at = "{stamp}"', ""]
    for route in routes:
        key = _key(route.task)
        lines += [f"# {note}" for note in route.notes]
        lines += [f"[tasks.{key}]", f"pareto = [{', '.join(json.dumps(m) for m in route.pareto)}]", ""]
        for c in route.candidates:
            lines += [
                f"[[tasks.{key}.candidates]]",
                f"model = {json.dumps(c.model)}",
                f"provider = {json.dumps(c.provider)}",
                f"score = {_float(c.score)}",
                f"ci_low = {_float(c.ci_low)}",
                f"ci_high = {_float(c.ci_high)}",
                f"usd_per_1k_tokens = {_float(c.usd_per_1k_tokens)}",
                f"p50_latency_ms = {_float(c.p50_latency_ms)}",
                f"in_house = {'true' if c.in_house else 'false'}",
                "",
            ]
    return "\n".join(lines)


def write_routes(routes: list[TaskRoute], path: str | Path) -> Path:
    """Write atomically (the gateway hot-reloads the file and must never see half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(routes_toml(routes), encoding="utf-8")
    tmp.replace(path)
    return path
