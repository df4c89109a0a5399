"""Policy filtering and ordering: which (model, provider) pairs may serve a request, best first.

Filtering always comes before ordering, and an empty allowed set is an error, never a fallback outside
the policy. Decisions are pure functions of (config, table, policy, request name), so they are cached
per routing-table generation and the hot path only does a dict lookup.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from autarky.gateway.capabilities import supports
from autarky.gateway.config import DATA_CLASSES, GatewayConfig, ModelEntry, ProviderConfig
from autarky.gateway.errors import GatewayError, bad_request, forbidden, not_found
from autarky.gateway.routes import Candidate, RoutesWatcher

TASK_PREFIX = "task:"


@dataclass(frozen=True, slots=True)
class Target:
    rank: int  # position in the routing table (or the task's candidate list)
    model: str
    model_entry: ModelEntry
    provider: str
    provider_config: ProviderConfig
    score: float
    usd_per_1k: float
    p50_latency_ms: float
    evidence: str = ""  # the routing table's evidence for this candidate's place (shown in x-autarky-route-reason)
    supports: frozenset[str] = frozenset()  # capabilities.supports: what it can carry


@dataclass(frozen=True, slots=True)
class Policy:
    """The effective policy for one request: global policy narrowed by the team and the key."""

    self_sufficient: bool = False
    regions: frozenset[str] | None = None
    models: frozenset[str] | None = None
    data_class: str = "internal"
    max_usd_per_1k: float | None = None
    latency_target_ms: float | None = None
    by_score: bool = False


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request may go: the allowed targets best first, and why (sent as x-autarky-route-reason)."""

    targets: tuple[Target, ...]
    task: str | None
    reason: str
    spread: bool = False  # some model has several deployments: each request rotates them (load balancing)


def rejection(target: Target, policy: Policy) -> str | None:
    """Why the policy forbids this target, or None when it is allowed."""
    if policy.models is not None and target.model not in policy.models:
        return "model not allowed"
    if policy.self_sufficient and not target.provider_config.in_house:
        return "self_sufficient"
    if policy.regions is not None and target.provider_config.region not in policy.regions:
        return "region"
    if not target.provider_config.cleared_for(policy.data_class):
        return "data class"
    if policy.max_usd_per_1k is not None and target.usd_per_1k > policy.max_usd_per_1k:
        return "cost ceiling"
    return None


def _finite(value: float, default: float) -> float:
    return value if math.isfinite(value) else default  # eval tables write `nan` for unmeasured values


def order(targets: list[Target], policy: Policy) -> list[Target]:
    """Table rank, or score (high first) then cost then latency; candidates over the latency target go last."""

    def key(t: Target) -> tuple:
        slow = policy.latency_target_ms is not None and _finite(t.p50_latency_ms, math.inf) > policy.latency_target_ms
        if not policy.by_score:
            return (slow, t.rank)
        return (slow, -_finite(t.score, -math.inf), _finite(t.usd_per_1k, math.inf),
                _finite(t.p50_latency_ms, math.inf), t.rank)

    return sorted(targets, key=key)


def _intersect(a: frozenset[str] | None, b: list[str] | tuple[str, ...] | None) -> frozenset[str] | None:
    if b is None:
        return a
    return frozenset(b) if a is None else a & frozenset(b)


def stricter(a: str, b: str) -> str:
    return a if DATA_CLASSES.index(a) >= DATA_CLASSES.index(b) else b


class Router:
    def __init__(self, config: GatewayConfig, routes: RoutesWatcher) -> None:
        self.config = config
        self.routes = routes
        self._cache: dict[tuple, RouteDecision | GatewayError] = {}
        self._generation = -1
        self._turns = itertools.count()

    def policy_for(self, team: str | None, key_models: tuple[str, ...] | None, data_class: str | None) -> Policy:
        g = self.config.policy
        t = self.config.teams.get(team or "")
        self_sufficient = g.self_sufficient or bool(t and t.self_sufficient)
        ceilings = [c for c in (g.max_usd_per_1k_tokens, t.max_usd_per_1k_tokens if t else None) if c is not None]
        klass = stricter(t.data_class if t else g.default_data_class, data_class or "public")
        return Policy(
            self_sufficient=self_sufficient,
            regions=_intersect(_intersect(None, g.allowed_regions), t.regions if t else None),
            models=_intersect(_intersect(None, t.models if t else None), key_models),
            data_class=klass,
            max_usd_per_1k=min(ceilings) if ceilings else None,
            latency_target_ms=g.latency_target_ms,
            by_score=g.order == "score",
        )

    def decide(
        self,
        name: str,
        task_header: str | None = None,
        team: str | None = None,
        key_models: tuple[str, ...] | None = None,
        data_class: str | None = None,
        needs: Mapping[str, str] | None = None,
        prompt_tokens: int = 0,
    ) -> RouteDecision:
        """The ordered targets for a request naming `name` (a model or `task:NAME`) that can carry what the
        request `needs` (capability -> field, from capabilities.needs); raises GatewayError."""
        table = self.routes.current()
        if self.routes.generation != self._generation:
            self._cache.clear()
            self._generation = self.routes.generation
        cache_key = (name, task_header, team, key_models, data_class)
        hit = self._cache.get(cache_key)
        if hit is None:
            try:
                hit = self._compute(table, name, task_header, team, key_models, data_class)
            except GatewayError as exc:
                hit = exc
            if len(self._cache) > 10_000:  # bounded: names come from clients
                self._cache.clear()
            self._cache[cache_key] = hit
        if isinstance(hit, GatewayError):
            raise hit
        if hit.spread:
            hit = spread(hit, next(self._turns))
        return capable(hit, needs or {}, prompt_tokens) if needs or prompt_tokens else hit

    def _compute(self, table, name, task_header, team, key_models, data_class) -> RouteDecision:  # noqa: ANN001
        task = task_header or (name[len(TASK_PREFIX) :] if name.startswith(TASK_PREFIX) else None)
        if task is not None:
            task_cfg = self.config.tasks.get(task)
            if task in table.tasks:
                candidates = list(table.tasks[task].candidates)
                if task_cfg is not None:
                    # The config's candidates the table lacks (e.g. a partner no eval has run) stay behind the
                    # table's as fallbacks: measured models first, a pragmatic fallback after them.
                    listed = {c.model for c in candidates}
                    candidates += [Candidate(model=m, score=-math.inf) for m in task_cfg.candidates
                                   if m not in listed]
            elif task_cfg is not None:
                candidates = [Candidate(model=m, score=-i) for i, m in enumerate(task_cfg.candidates)]  # listed order
            else:
                raise not_found(f"unknown task {task!r}; known: {sorted(set(table.tasks) | set(self.config.tasks))}",
                                code="task_not_found")
            if task_cfg is not None:
                data_class = stricter(task_cfg.data_class, data_class or "public")
        else:
            if name not in self.config.models:
                raise not_found(f"unknown model {name!r}; GET /v1/models lists models and tasks")
            candidates = [Candidate(model=name)]
        policy = self.policy_for(team, key_models, data_class)
        allowed: list[Target] = []
        dropped: list[str] = []
        for rank, cand in enumerate(candidates):
            targets = self._targets(cand, rank)
            if not targets:
                dropped.append(f"{cand.model}(not configured)")
                continue
            for target in targets:
                why = rejection(target, policy)
                if why is None:
                    allowed.append(target)
                else:
                    dropped.append(f"{cand.model}@{target.provider}({why})" if len(targets) > 1
                                   else f"{cand.model}({why})")
        if not allowed:
            what = f"task {task!r}" if task is not None else f"model {name!r}"
            raise forbidden(
                f"no model allowed by policy for {what} (team {team or '-'}, data class {policy.data_class}"
                f"{', self_sufficient' if policy.self_sufficient else ''}): rejected {', '.join(dropped) or 'none'}",
                code="no_allowed_route",
            )
        ordered = order(allowed, policy)
        head = f"task={task}" if task is not None else "model requested"
        how = "score,cost,latency" if policy.by_score else "table rank"
        reason = f"{head}; {len(ordered)} allowed of {len(candidates)}; by {how}"
        if policy.self_sufficient:
            reason += "; self_sufficient"
        if dropped:
            reason += "; dropped " + " ".join(dropped)
        groups = [t.rank for t in ordered]
        return RouteDecision(tuple(ordered), task, reason, spread=len(set(groups)) < len(groups))

    def _targets(self, cand: Candidate, rank: int) -> list[Target]:
        """One target per deployment of the candidate's model (only the named one when the table names it)."""
        model_cfg = self.config.models.get(cand.model)
        if model_cfg is None:
            return []
        return [
            Target(
                rank=rank,
                model=cand.model,
                model_entry=placed,
                provider=placed.provider,
                provider_config=self.config.providers[placed.provider],
                score=cand.score,
                # The table's price may be stale; the ceiling uses whichever of table and config is higher.
                usd_per_1k=max(cand.usd_per_1k_tokens or 0.0, placed.usd_per_1k()),
                p50_latency_ms=cand.p50_latency_ms if cand.p50_latency_ms is not None else 0.0,
                evidence=cand.evidence(),
                supports=supports(placed, self.config.providers[placed.provider]),
            )
            for placed in model_cfg.placements()
            if not cand.provider or cand.provider == placed.provider
        ]


def spread(decision: RouteDecision, turn: int) -> RouteDecision:
    """The decision with each run of one candidate's deployments rotated by `turn`: requests take turns on
    the first choice, and the others stay behind it as failover."""
    out: list[Target] = []
    for _, run in itertools.groupby(decision.targets, key=lambda t: t.rank):
        group = list(run)
        k = turn % len(group)
        out += group[k:] + group[:k]
    return replace(decision, targets=tuple(out))


def capable(decision: RouteDecision, needs: Mapping[str, str], prompt_tokens: int) -> RouteDecision:
    """The decision narrowed to targets that can carry what the request needs: a capability none has is a 400
    naming the field, and so is a prompt no allowed candidate's context window can hold."""
    targets = decision.targets
    dropped: list[str] = []
    for cap, field in needs.items():
        able = tuple(t for t in targets if cap in t.supports)
        if not able:
            names = ", ".join(t.model for t in targets)
            raise bad_request(f"{field}: needs {cap!r}, which no allowed candidate supports ({names}); declare it "
                              "with `supports` in the gateway config if the model can", param=field)
        dropped += [f"{t.model}(no {cap})" for t in targets if cap not in t.supports]
        targets = able
    if prompt_tokens:
        fits = tuple(t for t in targets if t.model_entry.context_window > prompt_tokens)
        if not fits:
            widest = max(t.model_entry.context_window for t in targets)
            raise GatewayError(400, f"messages: the prompt is about {prompt_tokens} tokens, more than any allowed "
                               f"candidate's context window holds (largest: {widest} tokens)",
                               param="messages", code="context_length_exceeded")
        dropped += [f"{t.model}(context {t.model_entry.context_window})" for t in targets if t not in fits]
        targets = fits
    if targets == decision.targets:
        return decision
    reason = decision.reason + ("; dropped " + " ".join(dropped) if dropped else "") + "; by capability"
    return replace(decision, targets=targets, reason=reason)
