"""Suites: a folder with `suite.toml` (what it measures and how it is graded) and `items.jsonl` (one item a line).

Bundled suites live in autarky/evals/suites/<name>/; users point `--suite` at their own folder. Everything is
validated on load so that a malformed suite fails before any request is sent, with the file and line named.

A suite declares what it needs of an endpoint in `needs`: "tools" (each item carries OpenAI-format `tools`, sent
with `tool_choice`, and the reply's tool calls are graded) or "json_schema" (the folder holds `schema.json`, sent
as a strict `response_format` in chat mode; a completions-mode endpoint gets the prompt alone, judged by the same
schema). Nothing is skipped for an endpoint that cannot serve them: its refusal (a 400) or a plain-text answer is
recorded as that item's failure, with format_valid = 0, so the leaderboard shows it.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autarky.errors import UserError
from autarky.evals.formats import schema_problem, tool_item_problem

SuiteKind = Literal["generate", "loglikelihood", "pairwise"]


class SuiteConfig(BaseModel):
    """The contents of suite.toml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    task: str = Field(min_length=1, max_length=128)  # product task the routing table is keyed by
    kind: SuiteKind
    grader: str
    metric: str = "score"
    description: str = ""
    system: str = ""  # system prompt for chat endpoints
    max_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[str] = Field(default_factory=list)
    needs: list[Literal["tools", "json_schema"]] = Field(default_factory=list)


SCHEMA_FILE = "schema.json"  # the response schema of a json_schema suite


class Suite(BaseModel):
    config: SuiteConfig
    items: list[dict[str, Any]]
    source: str  # folder it was loaded from
    response_schema: dict[str, Any] | None = None  # schema.json of a json_schema suite

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def checks_format(self) -> bool:
        """Whether items get a format_valid metric (the suite asks for tool calls or schema-valid JSON)."""
        return bool(self.config.needs)

    def response_format(self) -> dict[str, Any] | None:
        """The OpenAI `response_format` the suite's requests carry, if any."""
        if self.response_schema is None:
            return None
        return {"type": "json_schema", "json_schema": {"name": self.name.replace(".", "_")[:64], "strict": True,
                                                       "schema": self.response_schema}}

    def limited(self, limit: int | None) -> list[dict[str, Any]]:
        return self.items if limit is None else self.items[:limit]


def bundled_root() -> Path:
    return Path(str(resources.files("autarky.evals") / "suites"))


def bundled_suite_names() -> list[str]:
    return sorted(p.name for p in bundled_root().iterdir() if (p / "suite.toml").is_file())


def resolve_suite_dir(ref: str | Path) -> Path:
    """A bundled suite name or a path to a suite folder."""
    path = Path(ref)
    if path.is_dir():
        return path
    bundled = bundled_root() / str(ref)
    if (bundled / "suite.toml").is_file():
        return bundled
    raise UserError(
        f"no suite {str(ref)!r}: give a bundled suite ({', '.join(bundled_suite_names())}) "
        "or a folder holding suite.toml and items.jsonl"
    )


def load_suite(ref: str | Path) -> Suite:
    from autarky.evals.graders import get_grader  # graders import suite types; avoid the cycle at import time

    folder = resolve_suite_dir(ref)
    toml_path, items_path = folder / "suite.toml", folder / "items.jsonl"
    if not toml_path.is_file():
        raise UserError(f"{folder}: missing suite.toml; a suite folder needs suite.toml and items.jsonl")
    if not items_path.is_file():
        raise UserError(f"{folder}: missing items.jsonl; write one JSON object per line")
    try:
        raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{toml_path}: not valid TOML ({exc})") from exc
    try:
        config = SuiteConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'suite'}: {e['msg']}" for e in exc.errors())
        raise UserError(f"{toml_path}: {problems}") from exc
    grader = get_grader(config.grader)
    if config.kind not in grader.kinds:
        raise UserError(
            f"{toml_path}: grader {config.grader!r} grades {'/'.join(grader.kinds)} suites, not kind {config.kind!r}"
        )
    if "tools" in grader.required_fields and "tools" not in config.needs:
        raise UserError(f'{toml_path}: grader {config.grader!r} grades tool calls; add needs = ["tools"]')
    items = _read_items(items_path, grader.required_fields)
    if "tools" in config.needs:
        for item in items:
            if (problem := tool_item_problem(item)) is not None:
                raise UserError(f"{items_path}: item {item['id']!r}: {problem}")
    return Suite(config=config, items=items, source=str(folder), response_schema=_response_schema(folder, config))


def _response_schema(folder: Path, config: SuiteConfig) -> dict[str, Any] | None:
    path = folder / SCHEMA_FILE
    if "json_schema" not in config.needs:
        return None
    if not path.is_file():
        raise UserError(f"{folder}: needs json_schema but has no {SCHEMA_FILE}; write the response's JSON Schema there")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg})") from exc
    if (problem := schema_problem(schema)) is not None:
        raise UserError(f"{path}: {problem}")
    return schema


def _read_items(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg}); write one JSON object per line") from exc
        if not isinstance(item, dict):
            raise UserError(f"{path}:{lineno}: each line must be a JSON object")
        missing = [key for key in ("id", "prompt", *required) if key not in item]
        if missing:
            raise UserError(f"{path}:{lineno}: item lacks {', '.join(missing)}")
        item_id = str(item["id"])
        if item_id in seen:
            raise UserError(f"{path}:{lineno}: duplicate item id {item_id!r}; ids must be unique in a suite")
        seen.add(item_id)
        item["id"] = item_id
        items.append(item)
    if not items:
        raise UserError(f"{path}: no items; add at least one JSON object line")
    return items
