"""Usage and spend from the gateway's ledger (one `gateway_usage` row per request), grouped and windowed.

`usage_report(engine, by=("team",), since=..., until=..., in_house=...)` sums requests, errors, tokens and USD per
group (team, key, model and/or provider) over a window of request times, plus the in-house share: the fraction of
tokens served by providers that run on our own hardware (`in_house = true` in gateway.toml). Which providers are
in-house is not in the ledger, so the caller passes them; without them the share is unknown (None).
`autarky usage` is the CLI over it; its --json keys are `UsageReport.to_dict()`'s and stay stable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, case, func, literal, select

from autarky.errors import UserError
from autarky.gateway.config import GatewayConfig
from autarky.store.gateway_tables import gateway_usage

# --by name -> ledger column
GROUPS = {"team": "team", "key": "key_id", "model": "model", "provider": "provider"}
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")


@dataclass(frozen=True)
class UsageRow:
    """One group's sums. `group` maps each --by name to its value (None: not recorded, e.g. a rejected request)."""

    group: dict[str, str | None]
    requests: int
    errors: int  # requests answered with status >= 400
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    in_house_tokens: int | None  # None when the in-house providers are unknown

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def in_house_share(self) -> float | None:
        if self.in_house_tokens is None or not self.tokens:
            return None
        return self.in_house_tokens / self.tokens

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.group)
        fields = asdict(self)
        del fields["group"]
        return out | fields | {"tokens": self.tokens, "in_house_share": self.in_house_share}


@dataclass(frozen=True)
class UsageReport:
    by: tuple[str, ...]
    since: float | None  # epoch seconds; None: from the first row
    until: float | None  # epoch seconds, exclusive; None: up to now
    rows: list[UsageRow]  # by spend, highest first
    total: UsageRow

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "by": list(self.by),
            "rows": [r.to_dict() for r in self.rows],
            "total": self.total.to_dict(),
        }


def parse_when(text: str, now: float, option: str = "--since") -> float:
    """Epoch seconds from a duration back from `now` (`90m`, `24h`, `7d`, `2w`) or an ISO date/time (UTC unless
    it carries an offset)."""
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"bad {option} {text!r}; write a duration back from now (90m, 24h, 7d, 2w) or an ISO "
                        "date or time (2026-11-01, 2026-11-01T12:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def in_house_providers(config: GatewayConfig) -> set[str]:
    return {name for name, provider in config.providers.items() if provider.in_house}


def usage_report(engine: Engine, by: Sequence[str] = (), since: float | None = None, until: float | None = None,
                 in_house: Iterable[str] | None = None) -> UsageReport:
    """Sums per group of `by` (any of GROUPS, in order; none: only the total) over since <= ts < until."""
    unknown = [b for b in by if b not in GROUPS]
    if unknown:
        raise UserError(f"bad --by {unknown[0]!r}; use one or more of {', '.join(GROUPS)}")
    if since is not None and until is not None and since >= until:
        raise UserError("the window is empty: --since must be before --until")
    by = tuple(dict.fromkeys(by))  # a repeated --by groups once
    u = gateway_usage.c
    tokens = u.prompt_tokens + u.completion_tokens
    if in_house is None:
        in_house_sum = literal(None)
    else:
        in_house_sum = func.coalesce(func.sum(case((u.provider.in_(sorted(set(in_house))), tokens), else_=0)), 0)
    sums = [
        func.count(),
        func.coalesce(func.sum(case((u.status >= 400, 1), else_=0)), 0),
        func.coalesce(func.sum(u.prompt_tokens), 0),
        func.coalesce(func.sum(u.completion_tokens), 0),
        func.coalesce(func.sum(u.cost_usd), 0.0),
        in_house_sum,
    ]
    keys = [u[GROUPS[b]] for b in by]
    where = []
    if since is not None:
        where.append(u.ts >= since)
    if until is not None:
        where.append(u.ts < until)
    with engine.connect() as conn:
        grouped = conn.execute(select(*keys, *sums).where(*where).group_by(*keys)).all() if by else []
        total = conn.execute(select(*sums).where(*where)).one()
    rows = [_row(dict(zip(by, r[: len(by)], strict=True)), r[len(by):]) for r in grouped]
    rows.sort(key=lambda r: (-r.cost_usd, -r.tokens, [str(v) for v in r.group.values()]))
    return UsageReport(by, since, until, rows, _row({}, total))


def _row(group: dict[str, str | None], sums: Sequence[Any]) -> UsageRow:
    requests, errors, prompt, completion, cost, in_house = sums
    return UsageRow(group, int(requests), int(errors), int(prompt), int(completion), float(cost),
                    None if in_house is None else int(in_house))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
