"""`autarky finetune`: a thin shell over `autarky.finetune.finetune` (also run by `torchrun ... -m autarky finetune`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from autarky.clikit import field_help
from autarky.finetune.config import FinetuneConfig


def _opt(dotted: str, *flags: str) -> typer.models.OptionInfo:
    """An option over FinetuneConfig's `dotted` field: help and the shown default come from the config tree; the
    real default stays None, so a --config file's value is not overridden by a flag nobody gave."""
    return typer.Option(None, *flags, help=field_help(FinetuneConfig, dotted, show_default=True))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app."""

    @app.command("finetune")
    def finetune_command(
        base: str = _opt("model.base", "--base"),
        data: Path = _opt("data.path", "--data"),
        out: Path = _opt("run.out", "--out"),
        method: str = _opt("model.method", "--method"),
        lora_rank: int = _opt("lora.rank", "--lora-rank"),
        lora_alpha: float = _opt("lora.alpha", "--lora-alpha"),
        lora_dropout: float = _opt("lora.dropout", "--lora-dropout"),
        lora_targets: str = typer.Option(None, "--lora-targets", help=field_help(
            FinetuneConfig, "lora.targets", "comma-separated linear layers to adapt (wq,wk,wv,wo,w1,w2,w3)")),
        lr: float = _opt("optim.lr", "--lr"),
        steps: int = _opt("run.steps", "--steps"),
        epochs: float = _opt("run.epochs", "--epochs"),
        batch_size: int = _opt("data.batch_size", "--batch-size"),
        grad_accum: int = _opt("data.grad_accum", "--grad-accum"),
        seq_len: int = _opt("data.seq_len", "--seq-len"),
        packing: bool = typer.Option(None, "--packing/--no-packing", help=field_help(FinetuneConfig, "data.packing")),
        truncation: str = _opt("data.truncation", "--truncation"),
        val_fraction: float = _opt("data.val_fraction", "--val-fraction"),
        seed: int = _opt("run.seed", "--seed"),
        device: str = _opt("run.device", "--device"),
        resume: str = _opt("checkpoint.resume", "--resume"),
        ckpt_every: int = _opt("checkpoint.every", "--ckpt-every"),
        eval_every: int = _opt("run.eval_every", "--eval-every"),
        ac: str = _opt("parallel.activation_checkpointing", "--activation-checkpointing"),
        free_memory: bool = typer.Option(None, "--return-freed-memory/--keep-freed-memory",
                                         help=field_help(FinetuneConfig, "run.return_freed_memory")),
        config: Path = typer.Option(None, "--config", help="a fine-tuning TOML (e.g. a run's config.toml); "
                                                           "flags win"),
    ) -> None:
        """Fine-tune a model (LoRA, QLoRA-style or full) on chat or prompt/completion JSONL with its own chat
        template; one process, or every rank under torchrun."""
        from autarky.finetune.config import load_finetune_config
        from autarky.finetune.trainer import finetune

        values = {"model.base": base, "data.path": data, "run.out": out, "model.method": method,
                  "lora.rank": lora_rank, "lora.alpha": lora_alpha, "lora.dropout": lora_dropout,
                  "optim.lr": lr, "run.steps": steps, "run.epochs": epochs, "data.batch_size": batch_size,
                  "data.grad_accum": grad_accum, "data.seq_len": seq_len, "data.packing": packing,
                  "data.truncation": truncation, "data.val_fraction": val_fraction, "run.seed": seed,
                  "run.device": device, "checkpoint.resume": resume, "checkpoint.every": ckpt_every,
                  "run.eval_every": eval_every, "parallel.activation_checkpointing": ac,
                  "run.return_freed_memory": free_memory,
                  "lora.targets": [t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets else None}
        base_cfg = load_finetune_config(config) if config is not None else FinetuneConfig()
        summary = finetune(base_cfg.with_overrides(values))
        if int(os.environ.get("RANK", "0")) != 0:
            return
        run, c = summary.run, summary.counts
        val = f"{run.val_loss:.4f}" if run.val_loss is not None else "n/a"
        loss = f"{run.loss:.4f}" if run.loss is not None else "n/a"
        if run.already_complete:
            typer.echo(f"{run.run_dir}: {summary.method} fine-tune already complete at step {run.step} (loss {loss}, "
                       f"val loss {val}); nothing to do")
        else:
            typer.echo(f"{run.run_dir}: {summary.method} fine-tune, step {run.step}, loss {loss}, val loss {val}, "
                       f"{run.tokens_per_s:,.0f} tokens/s, MFU {run.mfu:.1%}, {run.wall_s:.0f} s")
        typer.echo(f"examples: {c['train']} train, {c['val']} val ({c['records']} records), {c['train_rows']} rows, "
                   f"{c['truncated']} truncated, {c['dropped']} dropped")
        if run.stopped_by is not None:
            typer.echo(f"stopped by signal {run.stopped_by}; continue with --resume auto", err=True)
            raise typer.Exit(128 + run.stopped_by)
