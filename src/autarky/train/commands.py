"""`autarky train`: a thin shell over `autarky.train.train` (also run by `torchrun ... -m autarky train`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from autarky.train.config import TrainConfig

_D = TrainConfig()  # the defaults, for the help text


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app."""

    @app.command("train")
    def train_command(
        preset: str = typer.Option(None, "--preset", help=f"model preset: nano, micro, small, 1b, 8b, 70b, 405b [default: {_D.model.preset}]"),
        data: Path = typer.Option(None, "--data", help="data dir from `autarky data build`"),
        out: Path = typer.Option(None, "--out", help="run dir to create (or continue with --resume auto)"),
        steps: int = typer.Option(None, "--steps", help=f"optimizer steps in total [default: {_D.run.steps}]"),
        batch_size: int = typer.Option(None, "--batch-size", help=f"GLOBAL sequences per step, all ranks [default: {_D.data.batch_size}]"),
        seq_len: int = typer.Option(None, "--seq-len", help=f"tokens per sequence [default: {_D.data.seq_len}]"),
        lr: float = typer.Option(None, "--lr", help=f"peak learning rate [default: {_D.optim.lr}]"),
        seed: int = typer.Option(None, "--seed", help=f"[default: {_D.run.seed}]"),
        grad_accum: int = typer.Option(None, "--grad-accum", help="micro-steps per optimizer step"),
        tp: int = typer.Option(None, "--tp", help="tensor-parallel degree (FSDP2 over the other ranks)"),
        compile_: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the blocks and the loss [default: on CUDA only]"),
        eval_every: int = typer.Option(None, "--eval-every", help=f"validation loss every N steps [default: {_D.run.eval_every}]"),
        ckpt_every: int = typer.Option(None, "--ckpt-every", help=f"DCP checkpoint every N steps [default: {_D.checkpoint.every}]"),
        keep: int = typer.Option(None, "--keep", help=f"keep the newest N checkpoints [default: {_D.checkpoint.keep}]"),
        resume: str = typer.Option(None, "--resume", help="'auto': continue from the newest complete checkpoint"),
        device: str = typer.Option(None, "--device", help="auto, cpu or cuda"),
        config: Path = typer.Option(None, "--config", help="a run TOML (e.g. another run's config.toml); flags win"),
    ) -> None:
        """Train a Llama-architecture model on a data dir; one process, or every rank under torchrun."""
        from autarky.train.config import load_config
        from autarky.train.loop import train

        base = load_config(config) if config is not None else TrainConfig()
        cfg = base.with_overrides({
            "model.preset": preset, "data.dir": data, "run.out": out, "run.steps": steps,
            "data.batch_size": batch_size, "data.seq_len": seq_len, "optim.lr": lr, "run.seed": seed,
            "data.grad_accum": grad_accum, "parallel.tp": tp, "parallel.compile": compile_,
            "run.eval_every": eval_every, "checkpoint.every": ckpt_every, "checkpoint.keep": keep,
            "checkpoint.resume": resume, "run.device": device,
        })  # fmt: skip
        summary = train(cfg)
        if int(os.environ.get("RANK", "0")) != 0:
            return
        val = f"{summary.val_loss:.4f}" if summary.val_loss is not None else "n/a"
        typer.echo(
            f"{summary.run_dir}: step {summary.step}, val loss {val}, {summary.tokens_per_s:,.0f} tokens/s, "
            f"MFU {summary.mfu:.1%}, {summary.wall_s:.0f} s"
        )
        if summary.stopped_by is not None:
            typer.echo(f"stopped by signal {summary.stopped_by}; continue with --resume auto", err=True)
            raise typer.Exit(128 + summary.stopped_by)
