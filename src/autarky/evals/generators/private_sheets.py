"""The organisation's own training examples for the spreadsheet task: "write a formula that …" over the company's
other sheets, as chat records (`{"messages": [system, user, assistant]}`) for `autarky finetune`.

They reuse the spreadsheet suite's sheet and question machinery (same prompt, same reference formulas) so the
fine-tuned model learns exactly the product's format, and they are disjoint from the suite's items twice over:
by construction (a different seed draws the sheets, and any sheet that equals an evaluation sheet is skipped),
and by a check anyone can rerun (`overlap`): no training example's (sheet, question) hash equals an evaluation
item's, nor does any training sheet's hash equal an evaluation sheet's.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from autarky.evals.generators import spreadsheet

SYSTEM = "You are a spreadsheet expert. Reply with a single formula only."  # the bundled suite's system prompt
SEED = 90210  # not the suite's seed (20261201): other sheets


def sheet_hash(sheet: list[list[Any]]) -> str:
    return hashlib.sha256(json.dumps(sheet, sort_keys=True).encode()).hexdigest()


def item_hash(sheet: list[list[Any]], prompt: str) -> str:
    """The (sheet, question) identity of an example or an evaluation item (the prompt holds the question)."""
    return hashlib.sha256(json.dumps([sheet, prompt], sort_keys=True).encode()).hexdigest()


def examples(n: int, eval_items: list[dict] | None = None, seed: int = SEED, tasks_per_sheet: int = 6) -> list[dict]:
    """n training examples on seeded random sheets none of which is an evaluation sheet."""
    eval_items = spreadsheet.items() if eval_items is None else eval_items
    held_out = {sheet_hash(item["sheet"]) for item in eval_items}
    rng = random.Random(seed)
    out: list[dict] = []
    while len(out) < n:
        rows = spreadsheet.random_rows(rng, rng.randint(4, 6))
        if sheet_hash([spreadsheet.HEADER, *rows]) in held_out:
            continue
        tasks = spreadsheet.tasks(rows)
        for task_id, what, reference, expected in rng.sample(tasks, min(tasks_per_sheet, len(tasks))):
            item = spreadsheet._item(task_id, rows, what, reference, expected)
            out.append({"id": f"private-{len(out):04d}-{task_id}", "sheet": item["sheet"], "prompt": item["prompt"],
                        "reference": reference})
            if len(out) == n:
                break
    return out


def chat_record(example: dict) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": example["prompt"]},
                         {"role": "assistant", "content": example["reference"]}]}


def overlap(train: list[dict], eval_items: list[dict]) -> dict[str, int]:
    """How many training examples share a (sheet, question) hash, or a sheet hash, with an evaluation item."""
    eval_pairs = {item_hash(item["sheet"], item["prompt"]) for item in eval_items}
    eval_sheets = {sheet_hash(item["sheet"]) for item in eval_items}
    return {"pairs": sum(item_hash(ex["sheet"], ex["prompt"]) in eval_pairs for ex in train),
            "sheets": sum(sheet_hash(ex["sheet"]) in eval_sheets for ex in train)}


def write_jsonl(path: Path, train: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(chat_record(ex)) + "\n" for ex in train), encoding="utf-8")
    return path
