"""The demo's first half: data → train → export → sample → plan, on this machine."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from autarky.contracts.rundir import read_metrics, steady_state
from autarky.demo.runner import DemoRunner
from autarky.plan.showcase import print_demo_plans

SAMPLE_PROMPTS = ("def ", "import os\n\n\nclass ", "    for i in range(")


@dataclass(frozen=True)
class BuildSettings:
    data_dir: Path
    run_dir: Path
    export_dir: Path
    max_mb: float = 5.0
    val_fraction: float = 0.1  # ~twice the held-out text of 0.05: a steadier validation loss
    steps: int | None = None  # None: the nano preset's own default


def build_model(runner: DemoRunner, settings: BuildSettings) -> dict:
    """Train the in-house model; returns a summary (val loss, tokens/s, MFU, step count)."""
    with runner.section("data: tokenizer and token shards from the Python standard library"):
        runner.run(["data", "build", "--corpus", "stdlib", "--out", settings.data_dir,
                    "--max-mb", settings.max_mb, "--val-fraction", settings.val_fraction])

    with runner.section("train: the nano preset on this CPU"):
        args = ["train", "--preset", "nano", "--data", settings.data_dir, "--out", settings.run_dir,
                "--resume", "auto"]
        if settings.steps:
            args += ["--steps", settings.steps]
        runner.run(args)

    with runner.section("export: a Hugging Face folder"):
        if settings.export_dir.exists():
            shutil.rmtree(settings.export_dir)
        runner.run(["model", "export", settings.run_dir, "--out", settings.export_dir])

    with runner.section("sample: the in-house model writes Python"):
        for seed, prompt in enumerate(SAMPLE_PROMPTS):
            text = runner.run(["model", "sample", settings.export_dir, "--prompt", prompt, "--max-tokens", 80,
                               "--temperature", 0.7, "--top-p", 0.95, "--seed", seed], capture=True)
            runner.console.print(f"[bold]prompt {prompt!r}[/bold]")
            runner.console.print(text.rstrip(), markup=False, highlight=False)

    summary = run_summary(settings.run_dir)
    runner.console.print(
        f"validation loss [bold]{summary['val_loss']:.3f}[/bold] after {summary['step']} steps · "
        f"{summary['tokens_per_s']:,.0f} tokens/s · MFU {summary['mfu']:.1%} of this CPU's measured peak"
    )

    with runner.section("plan: this machine at its measured MFU, and Llama 3.1 405B at scale"):
        runner.echo(["plan", "--mfu-from", settings.run_dir, "--compute-optimal"])
        print_demo_plans(settings.run_dir, runner.console)
    return summary


def run_summary(run_dir: Path) -> dict:
    rows = read_metrics(run_dir)
    evaluated = [r for r in rows if r.get("val_loss") is not None]
    # The steady state of the run-dir contract: the same statistic `autarky plan --mfu-from` uses.
    steady = steady_state([r for r in rows if r.get("tokens_per_s")])
    return {
        "step": rows[-1]["step"],
        "loss": rows[-1]["loss"],
        "val_loss": evaluated[-1]["val_loss"] if evaluated else float("nan"),
        "tokens_per_s": steady.tokens_per_s,
        "mfu": steady.mfu if steady.mfu is not None else 0.0,
    }
