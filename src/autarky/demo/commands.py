"""`autarky demo`: the CLI entry of the whole-loop demo."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from autarky.clikit import TableConsole
from autarky.paths import autarky_home


def run_demo(
    run_dir: Path = Path("runs/demo-nano"),
    max_mb: float = 5.0,
    steps: int | None = None,
    eval_limit: int = 4,
    private: bool = True,
    console: Console | None = None,
) -> dict:
    from autarky.demo.build import BuildSettings, build_model
    from autarky.demo.runner import DemoRunner

    console = console or TableConsole()
    workdir = autarky_home() / "demo"
    runner = DemoRunner(console, workdir)
    started = time.perf_counter()
    settings = BuildSettings(data_dir=workdir / "data", run_dir=run_dir, export_dir=workdir / "nano-demo",
                             max_mb=max_mb, steps=steps)
    try:
        summary = build_model(runner, settings)
        from autarky.demo.operate import OperateSettings, operate
        from autarky.demo.private import PrivateFigures, PrivateSettings, prepare

        figures = PrivateFigures()
        private_settings = PrivateSettings(workdir=workdir) if private else None
        adapter = prepare(runner, private_settings, figures) if private_settings else None
        summary |= operate(runner, OperateSettings(nano_dir=settings.export_dir, workdir=workdir,
                                                   eval_limit=eval_limit, adapter_dir=adapter,
                                                   private=private_settings), figures)
        if private_settings:
            summary["private"] = figures.as_dict()
    finally:
        runner.close()
    summary["wall_s"] = time.perf_counter() - started
    table = Table(title="demo sections", show_header=True)
    table.add_column("section")
    table.add_column("seconds", justify="right")
    for title, seconds in runner.timings:
        table.add_row(title, f"{seconds:.0f}")
    table.add_row("[bold]total", f"[bold]{summary['wall_s']:.0f}")
    console.print(table)
    return summary


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        run_dir: Path = typer.Option(Path("runs/demo-nano"), help="the training run directory"),
        max_mb: float = typer.Option(5.0, help="MB of standard-library source to train on"),
        steps: int = typer.Option(0, help="training steps (0: the nano preset's default)"),
        eval_limit: int = typer.Option(4, help="items per evaluation suite (its first N; the suites hold 120-210)"),
        private: bool = typer.Option(True, help="the private-data section: a LoRA adapter of SmolLM2 on the "
                                                "company's own spreadsheet examples, evaluated and routed"),
    ) -> None:
        """Run the whole loop on the built-in defaults: data, train, export, sample, plan, serve, gateway, eval."""
        run_demo(run_dir=run_dir, max_mb=max_mb, steps=steps or None, eval_limit=eval_limit, private=private)
