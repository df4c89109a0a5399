"""`autarky plan`: a thin shell over `autarky.plan.planner.plan` (see that module for the JSON keys)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from autarky.clikit import TableConsole, field_option
from autarky.errors import UserError
from autarky.plan.planner import PlanRequest

_MODEL = "Model"
_HW = "Hardware and utilisation"
_LAYOUT = "Parallel layout and memory"
_POWER = "Power and cost"
_REL = "Reliability"


def _opt(name: str, panel: str, help: str) -> typer.models.OptionInfo:  # noqa: A002
    """An option whose default is PlanRequest's own (the defaults live there; the CLI only forwards)."""
    return field_option(PlanRequest, name, help=help, rich_help_panel=panel)


def register(app: typer.Typer) -> None:
    """Add `autarky plan` to the app."""

    @app.command("plan")
    def plan_command(
        preset: str | None = _opt("preset", _MODEL, "model preset: nano … 405b, or llama3.1-8b, mistral-7b, qwen3-0.6b …"),
        hf_config: Path | None = _opt("hf_config", _MODEL, "a Hugging Face config.json (or its folder)"),
        params: float | None = _opt("params", _MODEL, "raw parameter count, e.g. 405e9"),
        active_params: float | None = _opt("active_params", _MODEL, "MoE: parameters a token touches"),
        layers: int | None = _opt("layers", _MODEL, "transformer layers"),
        hidden: int | None = _opt("hidden", _MODEL, "hidden (model) width"),
        heads: int | None = _opt("heads", _MODEL, "attention heads"),
        kv_heads: int | None = _opt("kv_heads", _MODEL, "key/value heads (GQA; default: --heads)"),
        head_dim: int | None = _opt("head_dim", _MODEL, "width of one head (default: hidden / heads)"),
        ffn: int | None = _opt("ffn", _MODEL, "feed-forward (SwiGLU) width"),
        vocab: int | None = _opt("vocab", _MODEL, "vocabulary size"),
        seq_len: int | None = _opt("seq_len", _MODEL, "training sequence length"),
        experts: int = _opt("experts", _MODEL, "MoE: experts per layer"),
        active_experts: int = _opt("active_experts", _MODEL, "MoE: experts per token"),
        tokens: float | None = _opt("tokens", _MODEL, "training tokens, e.g. 15.6e12"),
        compute_optimal: bool = _opt("compute_optimal", _MODEL, "tokens = 20 x params (Chinchilla)"),
        predict_loss: bool = _opt("predict_loss", _MODEL, "Chinchilla-fit loss, labelled"),
        gpu: str | None = _opt("gpu", _HW,
                               "h100 (default), a100-80gb, h200, b200, gb200, mi300x, h800, v100, tpu-v4, or "
                               "local (this machine, with --mfu-from)"),
        hardware_file: Path | None = _opt("hardware_file", _HW, "TOML with extra GPUs"),
        precision: str = _opt("precision", _HW, "bf16 | fp8: which dense peak MFU divides"),
        gpus: int | None = _opt("gpus", _HW, "cluster size → days"),
        days: float | None = _opt("days", _HW, "deadline → GPUs needed"),
        mfu: float | None = _opt("mfu", _HW, "model FLOPs utilisation, fraction (0, 1]"),
        tflops_per_gpu: float | None = _opt("tflops_per_gpu", _HW,
                                            "achieved TFLOP/s per GPU instead of --mfu"),
        mfu_from: Path | None = _opt("mfu_from", _HW, "run dir of `autarky train`: measured MFU"),
        flops_rule: str = _opt("flops_rule", _HW, "auto | 6nd | 6nd+attn | 8nd | autarky"),
        tp: int = _opt("tp", _LAYOUT, "tensor-parallel degree"),
        pp: int = _opt("pp", _LAYOUT, "pipeline-parallel degree"),
        cp: int = _opt("cp", _LAYOUT, "context-parallel degree"),
        ep: int = _opt("ep", _LAYOUT, "expert-parallel degree (MoE)"),
        dp: int | None = _opt("dp", _LAYOUT, "default: GPUs / (TP·PP·CP)"),
        zero: int = _opt("zero", _LAYOUT, "0 (DDP) … 3 (FSDP)"),
        recompute: str = _opt("recompute", _LAYOUT, "none | selective | full"),
        micro_batch: int | None = _opt("micro_batch", _LAYOUT,
                                       "per-rank sequences (default: the run's, else 1)"),
        flash_attention: bool = _opt("flash_attention", _LAYOUT,
                                     "attention without materialised scores (FlashAttention)"),
        optimizer: str = _opt("optimizer", _LAYOUT, "adamw | adamw8bit | sgd"),
        reserve_gb: float = _opt("reserve_gb", _LAYOUT, "CUDA context + NCCL per GPU"),
        find_layout: bool = _opt("find_layout", _LAYOUT, "search and rank layouts"),
        pue: float = _opt("pue", _POWER, "facility / IT power"),
        network_share: float = _opt("network_share", _POWER, "network + storage on top of servers"),
        power_load: float = _opt("power_load", _POWER, "average draw / nameplate while training"),
        usd_per_gpu_hour: float = _opt("usd_per_gpu_hour", _POWER, "price of one GPU-hour"),
        usd_per_kwh: float = _opt("usd_per_kwh", _POWER, "0 when the GPU-hour price includes power"),
        failure_source: str = _opt("failure_source", _REL, "llama3 | rsc1 | rsc2"),
        mtbf_gpu_hours: float | None = _opt("mtbf_gpu_hours", _REL, "per-GPU MTBF instead"),
        ckpt_write_min: float = _opt("ckpt_write_min", _REL, "blocking checkpoint write, minutes"),
        restart_min: float = _opt("restart_min", _REL, "restart after a failure, minutes"),
        goodput: float | None = _opt("goodput", _REL, "override the modelled goodput"),
        as_json: bool = typer.Option(False, "--json", help="print JSON for programs"),
        emit_launch: Path | None = typer.Option(None, help="write the torchrun + autarky train script here"),
    ) -> None:
        """GPUs, days, memory per GPU and layout, megawatts, cost and failures for training a model."""
        from pydantic import ValidationError

        from autarky.plan.launch import write_launch
        from autarky.plan.planner import plan
        from autarky.plan.report import render

        values = {k: v for k, v in locals().items()
                  if k not in ("as_json", "emit_launch", "ValidationError", "plan", "render",
                               "write_launch")}
        for name, value in values.items():  # inf/nan would reach integer maths (steps, GPUs) as a traceback
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{name.replace('_', '-')}: must be a finite number, got {value}")
        try:
            request = PlanRequest(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "input"
            raise UserError(f"{flag}: {err['msg']}") from None
        result = plan(request)
        if emit_launch is not None:
            try:
                write_launch(result, emit_launch)
            except OSError as exc:
                raise UserError(f"--emit-launch {emit_launch}: cannot write ({exc.strerror or exc})") from None
        if as_json:
            typer.echo(result.to_json())
        else:
            TableConsole().print(render(result))
            if emit_launch is not None:
                TableConsole().print(f"launch script written to [bold]{emit_launch}[/bold]")
