"""The demo's private-data section: the organisation's own spreadsheet examples (never the evaluation items) →
a LoRA fine-tune of SmolLM2 on this CPU → base and adapter served by one engine → a paired test of base, adapter
and partner on the spreadsheet suite → the routing table sending `task:spreadsheet` to the adapter, and the
gateway serving that product's traffic from it.

`prepare` runs before the servers start (it yields the adapter folder `operate` serves with `--lora`); `decide`
runs inside the eval section, before `eval routes`; `show_route` after it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.table import Table

from autarky.contracts.routes import Candidate, load_routing_table
from autarky.demo.runner import DemoRunner
from autarky.errors import UserError
from autarky.evals.generators.private_sheets import SYSTEM

ADAPTER = "sheets"  # the adapter's model name, served over smollm2
BASE = "smollm2"
PARTNER = "partner-mini"
SUITE = "spreadsheet"
# The first 60 references are 6-34 SmolLM2 tokens; the cap stops the base model's prose early (its decode is most
# of the eval's time) and still leaves every formula room.
MAX_TOKENS = 36
TASK = "spreadsheet"


@dataclass(frozen=True)
class PrivateSettings:
    workdir: Path
    examples: int = 320  # generated records; the run sees steps * batch_size of them
    # 32 * 4 rows of 256 tokens (twice the 16 steps that left the adapter at 6-7/40): ~2 min on 2 idle cores at
    # the ~265 LoRA tokens/s measured on this run (SmolLM2-135M) without finetune's return_freed_memory.
    steps: int = 32
    batch_size: int = 4
    seq_len: int = 256
    rank: int = 8
    lr: float = 2e-3
    # 6-0 discordant items give exact McNemar p = 0.031. With 16 steps and 40 items the adapter scored 6-7/40
    # against 0/40 (p = 0.016-0.031): one item from not deciding. At that hit rate 60 items give ~10-0 (p ~ 0.002).
    eval_limit: int = 60
    max_tokens: int = MAX_TOKENS

    @property
    def run_dir(self) -> Path:
        return self.workdir / "runs" / "sheets-lora"

    @property
    def adapter_dir(self) -> Path:
        return self.workdir / "sheets-adapter"


@dataclass
class PrivateFigures:
    train_examples: int = 0
    overlap: dict[str, int] = field(default_factory=dict)
    finetune_s: float = 0.0
    scores: dict[str, tuple[float, int]] = field(default_factory=dict)  # model -> (mean, n)
    p_values: dict[str, float] = field(default_factory=dict)  # "adapter vs model" -> p
    served_by: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"train_examples": self.train_examples, "overlap": self.overlap, "finetune_s": self.finetune_s,
                "scores": {m: {"mean": s, "n": n} for m, (s, n) in self.scores.items()},
                "p_values": self.p_values, "served_by": self.served_by}


def write_training_data(settings: PrivateSettings) -> tuple[Path, int, dict[str, int]]:
    """The private examples as chat JSONL, with the disjointness check against every evaluation item."""
    from autarky.evals.generators import private_sheets
    from autarky.evals.suite import load_suite

    eval_items = load_suite(SUITE).items  # the bundled suite as shipped, not as regenerated here
    train = private_sheets.examples(settings.examples, eval_items)
    overlap = private_sheets.overlap(train, eval_items)
    if any(overlap.values()):
        raise UserError(f"private training data overlaps the {SUITE} suite: {overlap}")
    path = private_sheets.write_jsonl(settings.workdir / "private" / "sheets.jsonl", train)
    return path, len(train), overlap


def finetune_args(settings: PrivateSettings, data: Path) -> list:
    return ["finetune", "--base", BASE, "--data", data, "--out", settings.run_dir, "--method", "lora",
            "--lora-rank", settings.rank, "--lora-alpha", 2 * settings.rank, "--lr", settings.lr,
            "--steps", settings.steps, "--batch-size", settings.batch_size, "--seq-len", settings.seq_len,
            "--packing", "--truncation", "drop", "--val-fraction", 0.05, "--eval-every", 0, "--ckpt-every", 0,
            "--resume", "auto", "--device", "cpu"]


def prepare(runner: DemoRunner, settings: PrivateSettings, figures: PrivateFigures) -> Path:
    """Generate the private examples, fine-tune SmolLM2 with LoRA, export the PEFT adapter; returns its folder."""
    with runner.section("private data: the company's own spreadsheet examples → a LoRA adapter of SmolLM2"):
        data, figures.train_examples, figures.overlap = write_training_data(settings)
        runner.console.print(
            f"{figures.train_examples} training examples from the company's sheets → {data}\n"
            f"disjoint from the {SUITE} suite: {figures.overlap['pairs']} (sheet, question) hashes and "
            f"{figures.overlap['sheets']} sheet hashes shared with its items (sha256; asserted 0)")
        started = time.perf_counter()
        runner.run(finetune_args(settings, data))
        figures.finetune_s = time.perf_counter() - started
        if settings.adapter_dir.exists():
            import shutil

            shutil.rmtree(settings.adapter_dir)
        runner.run(["model", "export", settings.run_dir, "--out", settings.adapter_dir])
        runner.console.print(f"fine-tune: [bold]{figures.finetune_s:.0f} s[/bold]; adapter (PEFT format) → "
                             f"{settings.adapter_dir}")
    return settings.adapter_dir


def decide(runner: DemoRunner, settings: PrivateSettings, figures: PrivateFigures, gateway_url: str,
           config: Path, key_env: str) -> None:
    """Base, adapter and partner on the first eval_limit spreadsheet items, greedy, then the paired tests."""
    with runner.section(f"private data: the adapter, its base and the partner on the first {settings.eval_limit} "
                        f"{SUITE} items, paired"):
        models = [f"--model={m}={gateway_url}" for m in (ADAPTER, BASE, PARTNER)]
        runner.run(["eval", "run", *models, "--suite", SUITE, "--limit", settings.eval_limit, "--concurrency", 4,
                    "--api-key-env", key_env, "--config", config, "--max-tokens-cap", settings.max_tokens])
        board = json.loads(runner.run(["eval", "leaderboard", "--json", "--config", config], capture=True))
        figures.scores = {row["model"]: (row["mean"], row["n"]) for row in board
                          if row["suite"] == SUITE and row["model"] in (ADAPTER, BASE, PARTNER)}
        for other in (BASE, PARTNER):
            rows = json.loads(runner.run(["eval", "compare", ADAPTER, other, "--suite", SUITE, "--json",
                                          "--config", config], capture=True))
            figures.p_values[other] = rows[0]["p_value"]
        print_figures(runner, figures)


def print_figures(runner: DemoRunner, figures: PrivateFigures) -> None:
    table = Table(title=f"{TASK}: the in-house adapter against its base and the partner (greedy, paired items)")
    for column in ("model", "score", "n", f"p ({ADAPTER} vs it)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in (ADAPTER, BASE, PARTNER):
        mean, n = figures.scores.get(model, (float("nan"), 0))
        p = figures.p_values.get(model)
        table.add_row(model, f"{mean:.3f}", str(n), "" if p is None else f"{p:.3g}")
    runner.console.print(table)
    runner.console.print(f"fine-tune time {figures.finetune_s:.0f} s on {figures.train_examples} private examples")


def show_route(runner: DemoRunner, figures: PrivateFigures, routes: Path, gateway_url: str, key_env: str,
               requests: int = 3) -> None:
    """The routing table's spreadsheet route, then product traffic as `task:spreadsheet` through the gateway."""
    with runner.section(f"private data: the routing table sends {TASK} to the adapter; product traffic"):
        route = _route(routes)
        first = route[0]
        p_next = "n/a" if first.p_vs_next is None else f"{first.p_vs_next:.3g}"
        runner.console.print(
            f"routes.toml [tasks.{TASK}]: " + " → ".join(c.model for c in route) +
            f"\nfirst: {first.model} (score {first.score:.3f}, p vs next {p_next})\nwhy: {first.reason or ''}",
            markup=False, highlight=False)
        from autarky.evals.generators.spreadsheet import render_sheet

        questions = ("the total of the Units column", "how many rows have Region North",
                     "the average Price of product Widget")
        headers = {"authorization": f"Bearer {os.environ[key_env]}"}
        for what in questions[:requests]:
            prompt = (f"Here is a spreadsheet (row 1 holds the headers, data is in rows 2-13):\n{render_sheet()}\n\n"
                      f"Write one spreadsheet formula that computes {what}. Reply with only the formula, starting with =.")
            body = {"model": f"task:{TASK}", "max_tokens": MAX_TOKENS, "temperature": 0,
                    "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]}
            reply = httpx.post(f"{gateway_url}/chat/completions", json=body, headers=headers, timeout=300)
            reply.raise_for_status()
            served = reply.headers.get("x-autarky-model", "?")
            figures.served_by.append(served)
            answer = reply.json()["choices"][0]["message"]["content"].strip().splitlines()[0:1]
            runner.console.print(f"task:{TASK} · {what} → {' '.join(answer)!r} · x-autarky-model: {served} · "
                                 f"x-autarky-route-reason: {reply.headers.get('x-autarky-route-reason', '')}",
                                 markup=False, highlight=False)
        if first.model != ADAPTER:
            runner.console.print(f"[bold red]the {TASK} route puts {first.model} first, not {ADAPTER}: the "
                                 f"adapter did not win beyond noise on this run[/bold red]")


def _route(routes: Path) -> list[Candidate]:
    table = load_routing_table(routes)
    if TASK not in table.tasks:
        raise UserError(f"{routes} has no route for task {TASK}")
    return table.tasks[TASK].candidates
