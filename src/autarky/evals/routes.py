"""The routing table the gateway follows: per product task, candidates in the order the gateway tries them, with the
score, CI, price, p50 latency and paired evidence that justify the order, plus the cost–quality Pareto front.

The ordering rule (`build_routes` with `paired` evidence and `alpha`; `autarky eval routes|report` always give
both, alpha 0.05 unless `--alpha` says otherwise):
1. Tie-break order: in-house first, then cheaper (USD per 1k tokens), then higher score, then name. This is the
   order the table keeps whenever the evals cannot tell the candidates apart.
2. Position by position, the incumbent is the first remaining candidate in tie-break order. A challenger (a
   remaining candidate with a strictly higher score) takes the position only when the paired test of the two on
   the items both finished gives p < alpha (McNemar on pass/fail items, exact for few discordant items; the paired
   bootstrap otherwise; see autarky.evals.stats). Challengers are tried best score first; the first one that wins
   beyond noise takes the position, else the incumbent keeps it. A pair with no shared item is never evidence.
3. `prefer_in_house_within` (percentage points of score, since scores are in [0, 1]): when the first candidate is
   not in-house and the best in-house model scores within that margin of the best score, the in-house model is
   moved to the top even if it is worse beyond noise; the points it gave up are written as `in_house_margin`.
4. `max_usd_per_1k`: candidates costing more per 1k tokens are left out before any of this.
So a challenger is never promoted on a difference the evals cannot tell from noise, and only the in-house margin
puts a model first against the evidence. Without `paired` evidence (or without `alpha`) candidates are ordered by
score alone, the table's behaviour before paired tests existed.

A task measured by several suites scores each model by the mean of its suite means (and of their CI bounds); its
paired tests pool the items of all the task's suites (an item is a (suite, item) pair). Each candidate records
`p_vs_next` (the p-value against the next candidate) and `reason` (why it is ahead of the rest: score, CI,
p-value against the incumbent or the runner-up, or the in-house margin). The file format is
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
from autarky.evals.stats import ALPHA, PairedComparison

__all__ = ["ALPHA", "Candidate", "TaskRoute", "build_routes", "paired_p_values", "pareto_front", "routes_toml",
           "write_routes"]

# (task, model a, model b) -> the paired comparison of a against b (or just its two-sided p-value), None without
# shared items
PairedP = Callable[[str, str, str], "PairedComparison | float | None"]


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


def paired_p_values(engine: Engine, board: list[SuiteScore], alpha: float = ALPHA) -> PairedP:
    """Paired comparisons from the store, on the items of all the task's suites both models finished."""
    suites: dict[str, list[str]] = defaultdict(list)
    for row in board:
        if row.suite not in suites[row.task]:
            suites[row.task].append(row.suite)

    def comparison(task: str, a: str, b: str) -> PairedComparison | None:
        result = compare(engine, a, b, suites[task], alpha)
        return result if result.n else None

    return comparison


class _Evidence:
    """Memoised paired tests of one task (two-sided p-values are symmetric in the two models)."""

    def __init__(self, task: str, paired: PairedP) -> None:
        self.task, self.paired = task, paired
        self.seen: dict[tuple[str, str], PairedComparison | float | None] = {}

    def p(self, a: str, b: str) -> float | None:
        result = self.get(a, b)
        if result is None:
            return None
        p = result.p_value if isinstance(result, PairedComparison) else result
        return float(f"{p:.3g}")

    def get(self, a: str, b: str) -> PairedComparison | float | None:
        if (b, a) in self.seen:
            return self.seen[(b, a)]
        if (a, b) not in self.seen:
            self.seen[(a, b)] = self.paired(self.task, a, b)
        return self.seen[(a, b)]

    def test(self, a: str, b: str) -> str:
        result = self.get(a, b)
        return f"{result.test} " if isinstance(result, PairedComparison) else ""


def _cost(c: Candidate) -> float:
    cost = c.usd_per_1k_tokens
    return cost if cost is not None and math.isfinite(cost) else math.inf


def tie_break_key(c: Candidate) -> tuple[bool, float, float, str]:
    """The order the table keeps within noise: in-house, then cheaper, then higher score, then name."""
    return (not c.in_house, _cost(c), -c.score, c.model)


def _scored(c: Candidate) -> str:
    return f"{c.model} {c.score:.3f} [95% CI {c.ci_low:.3f}-{c.ci_high:.3f}]"


def order_by_evidence(candidates: list[Candidate], evidence: _Evidence, alpha: float) -> list[Candidate]:
    """Rule 2 of the module docstring; each placed candidate (but the last) carries its `reason`."""
    remaining = sorted(candidates, key=tie_break_key)
    placed: list[Candidate] = []
    while remaining:
        incumbent = remaining[0]
        challengers = sorted((c for c in remaining if c.score > incumbent.score),
                             key=lambda c: (-c.score, tie_break_key(c)))
        winner, reason, noise = incumbent, "", []
        for challenger in challengers:
            p = evidence.p(challenger.model, incumbent.model)
            if p is not None and p < alpha:
                winner = challenger
                reason = (f"{_scored(challenger)} beats the tie-break choice {_scored(incumbent)} beyond noise: "
                          f"{evidence.test(challenger.model, incumbent.model)}p={p:.3g} < {alpha:g}")
                break
            noise.append(f"{challenger.model} {challenger.score:.3f} (" +
                         ("no shared items" if p is None else f"p={p:.3g} >= {alpha:g}") + ")")
        if winner is incumbent and len(remaining) > 1:
            reason = (f"{_scored(incumbent)} first by tie-break (in-house, then cost, then score); "
                      + (f"higher but within noise: {', '.join(noise)}" if noise else "no candidate left scores higher"))
        remaining.remove(winner)
        reason += _leads(winner, remaining, evidence, alpha) if reason else ""
        placed.append(winner.model_copy(update={"reason": reason or None}))
    return placed


def _leads(winner: Candidate, rest: list[Candidate], evidence: _Evidence, alpha: float) -> str:
    """Where the winner's lead over the lower-scored candidates is beyond noise: the evidence that it won, not only
    that it was first in the tie-break order."""
    beaten = []
    for other in sorted((c for c in rest if c.score < winner.score), key=lambda c: -c.score):
        p = evidence.p(winner.model, other.model)
        if p is not None and p < alpha:
            beaten.append(f"{other.model} ({evidence.test(winner.model, other.model)}p={p:.3g})")
    return f"; beats beyond noise: {', '.join(beaten)}" if beaten else ""


def build_routes(board: list[SuiteScore], providers: dict[str, str] | None = None,
                 prefer_in_house_within: float | None = None, max_usd_per_1k: float | None = None,
                 paired: PairedP | None = None, alpha: float | None = None) -> list[TaskRoute]:
    """One route per task, ordered as the module docstring says (`alpha` and `paired` switch on the noise rule)."""
    providers = providers or {}
    per_task: dict[str, dict[str, list[SuiteScore]]] = defaultdict(lambda: defaultdict(list))
    for row in board:
        per_task[row.task][row.model].append(row)
    routes = []
    for task in sorted(per_task):
        evidence = _Evidence(task, paired) if paired is not None else None
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
        if evidence is not None and alpha is not None:
            candidates = order_by_evidence(candidates, evidence, alpha)
        else:
            candidates.sort(key=lambda c: (-c.score, c.usd_per_1k_tokens, c.model))
        if prefer_in_house_within is not None and candidates and not candidates[0].in_house:
            top = max(candidates, key=lambda c: c.score)
            in_house = [c for c in candidates if c.in_house and c.score >= top.score - prefer_in_house_within / 100]
            if in_house:
                chosen = in_house[0]
                margin = (top.score - chosen.score) * 100
                candidates.remove(chosen)
                reason = (f"in-house margin: {_scored(chosen)} is {margin:.1f} points below the best, {_scored(top)}, "
                          f"within {prefer_in_house_within:g}")
                if evidence is not None and evidence.p(chosen.model, top.model) is not None:
                    reason += f" ({evidence.test(chosen.model, top.model)}p={evidence.p(chosen.model, top.model):.3g})"
                candidates.insert(0, chosen.model_copy(update={"in_house_margin": _round(margin, 3), "reason": reason}))
                notes.append(f"in-house {chosen.model} preferred: {margin:.1f} points below the "
                             f"best, within {prefer_in_house_within:g}")
        if evidence is not None:
            candidates = [c.model_copy(update={"p_vs_next": evidence.p(c.model, nxt.model)})
                          for c, nxt in zip(candidates, candidates[1:], strict=False)] + candidates[-1:]
        routes.append(TaskRoute(task=task, candidates=candidates, pareto=pareto_front(candidates), notes=notes))
    return routes


def routes_toml(routes: list[TaskRoute], generated_at: datetime | None = None) -> str:
    return RoutingTable.of(routes, generated_at).to_toml()


def write_routes(routes: list[TaskRoute], path: str | Path) -> Path:
    """Write atomically (the gateway hot-reloads the file and must never see half of it)."""
    return write_routing_table(RoutingTable.of(routes), path)
