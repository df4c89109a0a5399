"""Pairwise battles in the arena-rank vocabulary (`model_a`, `model_b`, `winner` ∈ {model_a, model_b, tie, both_bad}),
from three sources: an LMArena/FastChat file, paired graded items in the store, or an LLM judge asked in both orders.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from autarky.errors import UserError

WINNERS = ("model_a", "model_b", "tie", "both_bad", "tie (bothbad)")


@dataclass(frozen=True)
class Battle:
    model_a: str
    model_b: str
    winner: str
    category: str = ""
    tstamp: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


def load_battles(path: str | Path) -> list[Battle]:
    """JSONL (one battle a line) or a JSON array (FastChat's clean_battle dumps). Non-anonymous rows
    (`"anony": false`) are skipped, as the leaderboard rates only anonymous battles."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no battles file at {path}; give a JSONL file with model_a, model_b, winner per line")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg})") from exc
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
    battles = []
    for where, row in rows:
        if not isinstance(row, dict) or not all(k in row for k in ("model_a", "model_b", "winner")):
            raise UserError(f"{path}:{where}: each battle needs model_a, model_b and winner")
        if row["winner"] not in WINNERS:
            raise UserError(f"{path}:{where}: winner {row['winner']!r} is not one of {', '.join(WINNERS)}")
        if row["model_a"] == row["model_b"]:
            raise UserError(f"{path}:{where}: a model cannot battle itself ({row['model_a']!r})")
        if row.get("anony", True) is False:
            continue
        stamp = row.get("tstamp", row.get("timestamp"))
        battles.append(Battle(str(row["model_a"]), str(row["model_b"]), row["winner"],
                              str(row.get("category") or row.get("task_tag") or ""),
                              float(stamp) if isinstance(stamp, (int, float)) else None))
    if not battles:
        raise UserError(f"{path}: no (anonymous) battles in the file")
    return battles


def write_battles(battles: list[Battle], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(b.to_json()) + "\n" for b in battles), encoding="utf-8")


def battles_from_results(engine: Engine, suites: list[str] | None = None) -> list[Battle]:
    """Every pair of models on every item both finished: the higher score wins, equal scores tie."""
    from autarky.evals.results import load_results, suite_info

    tasks = {name: meta["task"] for name, meta in suite_info(engine).items() if meta["kind"] != "pairwise"}
    scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in load_results(engine, suites=suites):
        if row["suite"] in tasks:
            scores[(row["suite"], row["item_id"])][row["model"]] = row["score"]
    battles = []
    for (suite, _item), by_model in sorted(scores.items()):
        for a, b in itertools.combinations(sorted(by_model), 2):
            sa, sb = by_model[a], by_model[b]
            winner = "model_a" if sa > sb else "model_b" if sb > sa else "tie"
            battles.append(Battle(a, b, winner, tasks[suite], float(len(battles))))
    return battles


JUDGE_PROMPT = """You are judging two answers to the same request. Reply with exactly one of: A, B, TIE.

Request:
{prompt}

Answer A:
{first}

Answer B:
{second}

Which answer is better? Reply A, B or TIE."""

_VERDICT = re.compile(r"\b(A|B|TIE)\b")


def parse_verdict(text: str) -> str:
    match = _VERDICT.search(text.upper())
    return match.group(1) if match else "TIE"


async def judge_pair(client: Any, judge: Any, prompt: str, out_a: str, out_b: str) -> str:
    """Ask in both orders; a consistent preference wins, anything else is a tie (cancels position bias)."""
    first = parse_verdict((await client.generate(judge, JUDGE_PROMPT.format(prompt=prompt, first=out_a, second=out_b),
                                                 max_tokens=8)).text)
    second = parse_verdict((await client.generate(judge, JUDGE_PROMPT.format(prompt=prompt, first=out_b, second=out_a),
                                                  max_tokens=8)).text)
    if first == "A" and second == "B":
        return "model_a"
    if first == "B" and second == "A":
        return "model_b"
    return "tie"


def judge_battles(engine: Engine, suite: str, judge_url: str, judge_model: str, api_key: str = "",
                  concurrency: int = 4) -> list[Battle]:
    """LLM-judged battles between every pair of models on every item of `suite` both answered."""
    from autarky.evals.client import Client, Endpoint
    from autarky.evals.results import load_results, suite_info

    rows = load_results(engine, suites=[suite])
    if not rows:
        raise UserError(f"no results for suite {suite!r} in the store; run `autarky eval run --suite {suite}` first")
    task = suite_info(engine).get(suite, {}).get("task", suite)
    outputs: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        outputs[row["item_id"]][row["model"]] = row
    judge = Endpoint(judge_model, judge_url.rstrip("/"), api_key)

    async def run() -> list[Battle]:
        client = Client()
        semaphore = asyncio.Semaphore(concurrency)
        try:
            await client.check(judge)

            async def one(a: dict[str, Any], b: dict[str, Any]) -> Battle:
                async with semaphore:
                    winner = await judge_pair(client, judge, a["prompt"], a["output"], b["output"])
                return Battle(a["model"], b["model"], winner, task)

            jobs = [one(by_model[x], by_model[y]) for _item, by_model in sorted(outputs.items())
                    for x, y in itertools.combinations(sorted(by_model), 2)]
            return list(await asyncio.gather(*jobs))
        finally:
            await client.aclose()

    return asyncio.run(run())
