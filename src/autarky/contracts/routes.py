"""The routing table (`routes.toml`): per product task, candidates in the order the gateway tries them.

    generated_at = "2026-11-23T05:00:00Z"
    [tasks.spreadsheet]
    pareto = ["ours", "partner-big"]             # cost–quality front, cheapest first
    notes = ["in-house ours preferred: ..."]     # the policy that shaped the order (optional)
    [[tasks.spreadsheet.candidates]]
    model = "ours"
    provider = ""                                # empty: the gateway resolves it from its config
    score = 0.77                                 # then ci_low, ci_high, usd_per_1k_tokens, p50_latency_ms,
    in_house = true                              # in_house
    p_vs_next = 0.03                             # evidence for the order (optional, see `Candidate`):
    in_house_margin = 3.0                        # p-value against the next one, in-house preference margin,
    reason = "in-house margin: ..."              # and why this candidate is ahead of the rest, in words

One schema: the writer (`autarky eval routes`, `autarky.evals.routes`) dumps these models and the reader (the
gateway, hot-reloaded) validates into them; an unknown or misspelt field is an error naming the file and field,
never a silently defaulted value. Only `model` is required, so hand-written tables stay short.
"""

from __future__ import annotations

import math
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autarky.errors import UserError

HEADER = "# written by `autarky eval routes`; read by the gateway"


class Candidate(BaseModel):
    """One model that may serve a task, with the numbers that justify its place."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    provider: str = ""  # empty: the gateway resolves the provider from its config
    score: float = 0.0
    ci_low: float | None = None
    ci_high: float | None = None
    usd_per_1k_tokens: float | None = None
    p50_latency_ms: float | None = None
    in_house: bool | None = None  # informational; the gateway's provider config decides
    # Evidence for the order: the two-sided paired p-value of this candidate's score against the next one's (for
    # the first: the runner-up), and, when the in-house preference put it first, the score points it gave up;
    # `reason` says in words why it is ahead of the rest (autarky.evals.routes states the rule).
    p_vs_next: float | None = None
    in_house_margin: float | None = None
    reason: str | None = None

    def evidence(self) -> str:
        """The evidence fields in one line (the gateway's route-reason header); empty when there are none."""
        if self.p_vs_next is None and self.in_house_margin is None and not self.reason:
            return ""
        parts = [f"score={self.score:.3g}"]
        if self.ci_low is not None and self.ci_high is not None:
            parts.append(f"ci={self.ci_low:.3g}..{self.ci_high:.3g}")
        if self.p_vs_next is not None:
            parts.append(f"p_vs_next={self.p_vs_next:.3g}")
        if self.in_house_margin is not None:
            parts.append(f"in_house_margin={self.in_house_margin:.3g}")
        if self.reason:
            parts.append(f"({self.reason})")
        return " ".join(parts)


class TaskRoute(BaseModel):
    """A task's candidates, best first; `task` is the table's key (filled in on reading, not written)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field("", exclude=True)
    pareto: list[str] = []
    candidates: list[Candidate] = []
    notes: list[str] = []


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    generated_at: str | None = None
    tasks: dict[str, TaskRoute] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _tasks_know_their_names(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
            return data
        tasks = {}
        for name, route in data["tasks"].items():
            if isinstance(route, dict):
                if "task" in route:
                    raise ValueError(f"tasks.{name}: unknown field 'task' (a task is named by its table's key)")
                route = {**route, "task": name}
            tasks[name] = route
        return {**data, "tasks": tasks}

    @classmethod
    def of(cls, routes: list[TaskRoute], generated_at: datetime | None = None) -> RoutingTable:
        stamp = (generated_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(generated_at=stamp, tasks={r.task: r for r in routes})

    def to_toml(self) -> str:
        data = self.model_dump(exclude_none=True)
        for route in data.get("tasks", {}).values():
            if not route["notes"]:
                del route["notes"]
        return HEADER + "\n" + dumps_toml(data)


def parse_routing_table(text: str, source: str | Path) -> RoutingTable:
    """Validate TOML text; every problem is one UserError line naming `source` and the field."""
    try:
        return RoutingTable.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"routing table {source} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"routing table {source}: field {where}: {msg}" if where else
                        f"routing table {source}: {msg}") from exc


def load_routing_table(path: str | Path) -> RoutingTable:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise UserError(f"routing table {path} not found; run `autarky eval routes` or write one by hand") from exc
    return parse_routing_table(text, path)


def write_routing_table(table: RoutingTable, path: str | Path) -> Path:
    """Write atomically (the gateway hot-reloads the file and must never see half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(table.to_toml(), encoding="utf-8")
    tmp.replace(path)
    return path


# A TOML writer for the JSON-like trees `model_dump` gives (no dates, no None): scalars first, then tables.
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    _table(lines, [], data, header=False)
    return "\n".join(lines) + "\n"


def _table(lines: list[str], path: list[str], data: dict[str, Any], header: bool, array: bool = False) -> None:
    scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    if header or array:
        name = ".".join(_key(p) for p in path)
        lines += ["", f"[[{name}]]" if array else f"[{name}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    for k, v in data.items():
        if _is_table(v):
            # A table holding only tables needs no header of its own (`[tasks]` before `[tasks.x]`).
            own = not v or any(not _is_table(x) for x in v.values())
            _table(lines, [*path, k], v, header=own)
        elif _is_table_array(v):
            for item in v:
                _table(lines, [*path, k], item, header=False, array=True)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _string(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped (TOML has no surrogate escapes, so
    everything else is written as itself)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
