"""The planning section of `autarky demo`: the demo's own model on this machine beside Llama 3.1 405B on
16,384 H100 (the published run) and on a cluster 8× larger, with slow and with fast checkpoint/restart."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from autarky.plan.planner import PlanRequest, PlanResult, plan
from autarky.plan.report import render_comparison

LLAMA_405B = dict(preset="405b", tokens=15.6e12, gpu="h100", mfu=0.41, tp=8, pp=16, zero=2, recompute="none")


def demo_plans(run_dir: Path | None) -> list[tuple[str, PlanResult]]:
    """(label, plan) pairs; the first only when a finished run directory with metrics.jsonl is given."""
    plans: list[tuple[str, PlanResult]] = []
    if run_dir is not None:
        plans.append(("this machine (measured MFU)", plan(PlanRequest(mfu_from=run_dir, compute_optimal=True))))
    plans.append(("405B · 16,384 H100", plan(PlanRequest(**LLAMA_405B, gpus=16_384))))
    plans.append(("405B · 131,072 H100", plan(PlanRequest(**LLAMA_405B, gpus=131_072))))
    # At 100K+ GPUs in-memory checkpoints (seconds) and fast restarts are what keep goodput up (planner.md §4.4).
    plans.append(("same, 6 s ckpt, 2 min restart", plan(PlanRequest(**LLAMA_405B, gpus=131_072, ckpt_write_min=0.1,
                                                                    restart_min=2.0))))
    return plans


def print_demo_plans(run_dir: Path | None, console: Console | None = None) -> list[tuple[str, PlanResult]]:
    plans = demo_plans(run_dir)
    (console or Console()).print(render_comparison([p for _, p in plans], [label for label, _ in plans]))
    return plans
