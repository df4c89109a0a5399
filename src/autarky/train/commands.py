"""`autarky train`: a thin shell over `autarky.train.train` (also run by `torchrun ... -m autarky train`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from autarky.clikit import field_help
from autarky.train.config import TrainConfig


def _opt(dotted: str, flag: str, help: str | None = None) -> typer.models.OptionInfo:  # noqa: A002
    """An option over TrainConfig's `dotted` field: help and the shown default come from the config tree. The real
    default stays None, so a --config file's value is not overridden by a flag nobody gave."""
    return typer.Option(None, flag, help=field_help(TrainConfig, dotted, help, show_default=True))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app."""

    @app.command("train")
    def train_command(
        preset: str = _opt("model.preset", "--preset"),
        data: Path = typer.Option(None, "--data", help=field_help(TrainConfig, "data.dir")),
        out: Path = typer.Option(None, "--out", help=field_help(TrainConfig, "run.out", "run dir to create (or "
                                                                 "continue with --resume auto)")),
        steps: int = _opt("run.steps", "--steps"),
        batch_size: int = _opt("data.batch_size", "--batch-size"),
        seq_len: int = _opt("data.seq_len", "--seq-len"),
        lr: float = _opt("optim.lr", "--lr"),
        seed: int = _opt("run.seed", "--seed"),
        grad_accum: int = _opt("data.grad_accum", "--grad-accum"),
        order: str = _opt("data.order", "--data-order"),
        tp: int = _opt("parallel.tp", "--tp"),
        ep: int = _opt("parallel.ep", "--ep"),
        compile_: bool = typer.Option(None, "--compile/--no-compile",
                                      help=field_help(TrainConfig, "parallel.compile")),
        ac: str = _opt("parallel.activation_checkpointing", "--activation-checkpointing"),
        eval_every: int = _opt("run.eval_every", "--eval-every"),
        ckpt_every: int = _opt("checkpoint.every", "--ckpt-every"),
        keep: int = _opt("checkpoint.keep", "--keep"),
        resume: str = _opt("checkpoint.resume", "--resume"),
        device: str = _opt("run.device", "--device"),
        config: Path = typer.Option(None, "--config", help="a run TOML (e.g. another run's config.toml); flags win"),
    ) -> None:
        """Train a Llama-architecture model on a data dir; one process, or every rank under torchrun."""
        from autarky.train.config import load_config
        from autarky.train.loop import train

        base = load_config(config) if config is not None else TrainConfig()
        cfg = base.with_overrides({
            "model.preset": preset, "data.dir": data, "run.out": out, "run.steps": steps,
            "data.batch_size": batch_size, "data.seq_len": seq_len, "optim.lr": lr, "run.seed": seed,
            "data.grad_accum": grad_accum, "data.order": order, "parallel.tp": tp, "parallel.ep": ep,
            "parallel.compile": compile_, "parallel.activation_checkpointing": ac, "run.eval_every": eval_every,
            "checkpoint.every": ckpt_every, "checkpoint.keep": keep, "checkpoint.resume": resume, "run.device": device,
        })  # fmt: skip
        summary = train(cfg)
        if int(os.environ.get("RANK", "0")) != 0:
            return
        val = f"{summary.val_loss:.4f}" if summary.val_loss is not None else "n/a"
        if summary.already_complete:
            typer.echo(f"{summary.run_dir}: already complete at step {summary.step} (val loss {val}); nothing to do")
            return
        typer.echo(
            f"{summary.run_dir}: step {summary.step}, val loss {val}, {summary.tokens_per_s:,.0f} tokens/s, "
            f"MFU {summary.mfu:.1%}, {summary.wall_s:.0f} s"
        )
        if summary.stopped_by is not None:
            typer.echo(f"stopped by signal {summary.stopped_by}; continue with --resume auto", err=True)
            raise typer.Exit(128 + summary.stopped_by)
