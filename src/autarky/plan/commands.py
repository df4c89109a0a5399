"""`autarky plan`: a thin shell over `autarky.plan.planner.plan` (see that module for the JSON keys)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from autarky.errors import UserError

_MODEL = "Model"
_HW = "Hardware and utilisation"
_LAYOUT = "Parallel layout and memory"
_POWER = "Power and cost"
_REL = "Reliability"


def register(app: typer.Typer) -> None:
    """Add `autarky plan` to the app."""

    @app.command("plan")
    def plan_command(
        preset: str | None = typer.Option(None, help="model preset: nano … 405b", rich_help_panel=_MODEL),
        hf_config: Path | None = typer.Option(None, help="a Hugging Face config.json (or its folder)",
                                              rich_help_panel=_MODEL),
        params: float | None = typer.Option(None, help="raw parameter count, e.g. 405e9", rich_help_panel=_MODEL),
        active_params: float | None = typer.Option(None, help="MoE: parameters a token touches",
                                                   rich_help_panel=_MODEL),
        layers: int | None = typer.Option(None, rich_help_panel=_MODEL),
        hidden: int | None = typer.Option(None, rich_help_panel=_MODEL),
        heads: int | None = typer.Option(None, rich_help_panel=_MODEL),
        kv_heads: int | None = typer.Option(None, rich_help_panel=_MODEL),
        head_dim: int | None = typer.Option(None, rich_help_panel=_MODEL),
        ffn: int | None = typer.Option(None, rich_help_panel=_MODEL),
        vocab: int | None = typer.Option(None, rich_help_panel=_MODEL),
        seq_len: int | None = typer.Option(None, help="training sequence length", rich_help_panel=_MODEL),
        experts: int = typer.Option(1, help="MoE: experts per layer", rich_help_panel=_MODEL),
        active_experts: int = typer.Option(1, help="MoE: experts per token", rich_help_panel=_MODEL),
        tokens: float | None = typer.Option(None, help="training tokens, e.g. 15.6e12", rich_help_panel=_MODEL),
        compute_optimal: bool = typer.Option(False, help="tokens = 20 x params (Chinchilla)", rich_help_panel=_MODEL),
        predict_loss: bool = typer.Option(False, help="Chinchilla-fit loss, labelled", rich_help_panel=_MODEL),
        gpu: str | None = typer.Option(None, help="h100 (default), a100-80gb, h200, b200, gb200, mi300x, h800, "
                                                  "v100, tpu-v4, or local (this machine, with --mfu-from)",
                                       rich_help_panel=_HW),
        hardware_file: Path | None = typer.Option(None, help="TOML with extra GPUs", rich_help_panel=_HW),
        precision: str = typer.Option("bf16", help="bf16 | fp8: which dense peak MFU divides",
                                      rich_help_panel=_HW),
        gpus: int | None = typer.Option(None, help="cluster size → days", rich_help_panel=_HW),
        days: float | None = typer.Option(None, help="deadline → GPUs needed", rich_help_panel=_HW),
        mfu: float | None = typer.Option(None, help="model FLOPs utilisation, fraction (0, 1]", rich_help_panel=_HW),
        tflops_per_gpu: float | None = typer.Option(None, help="achieved TFLOP/s per GPU instead of --mfu",
                                                    rich_help_panel=_HW),
        mfu_from: Path | None = typer.Option(None, help="run dir of `autarky train`: measured MFU",
                                             rich_help_panel=_HW),
        flops_rule: str = typer.Option("auto", help="auto | 6nd | 6nd+attn | 8nd | autarky", rich_help_panel=_HW),
        tp: int = typer.Option(1, rich_help_panel=_LAYOUT),
        pp: int = typer.Option(1, rich_help_panel=_LAYOUT),
        cp: int = typer.Option(1, rich_help_panel=_LAYOUT),
        ep: int = typer.Option(1, rich_help_panel=_LAYOUT),
        dp: int | None = typer.Option(None, help="default: GPUs / (TP·PP·CP)", rich_help_panel=_LAYOUT),
        zero: int = typer.Option(1, help="0 (DDP) … 3 (FSDP)", rich_help_panel=_LAYOUT),
        recompute: str = typer.Option("selective", help="none | selective | full", rich_help_panel=_LAYOUT),
        micro_batch: int | None = typer.Option(None, help="per-rank sequences (default: the run's, else 1)",
                                                rich_help_panel=_LAYOUT),
        flash_attention: bool = typer.Option(True, rich_help_panel=_LAYOUT),
        optimizer: str = typer.Option("adamw", help="adamw | adamw8bit | sgd", rich_help_panel=_LAYOUT),
        reserve_gb: float = typer.Option(1.0, help="CUDA context + NCCL per GPU", rich_help_panel=_LAYOUT),
        find_layout: bool = typer.Option(False, help="search and rank layouts", rich_help_panel=_LAYOUT),
        pue: float = typer.Option(1.2, help="facility / IT power", rich_help_panel=_POWER),
        network_share: float = typer.Option(0.10, help="network + storage on top of servers",
                                            rich_help_panel=_POWER),
        power_load: float = typer.Option(0.9, help="average draw / nameplate while training",
                                         rich_help_panel=_POWER),
        usd_per_gpu_hour: float = typer.Option(2.0, rich_help_panel=_POWER),
        usd_per_kwh: float = typer.Option(0.0, help="0 when the GPU-hour price includes power",
                                          rich_help_panel=_POWER),
        failure_source: str = typer.Option("llama3", help="llama3 | rsc1 | rsc2", rich_help_panel=_REL),
        mtbf_gpu_hours: float | None = typer.Option(None, help="per-GPU MTBF instead", rich_help_panel=_REL),
        ckpt_write_min: float = typer.Option(1.0, help="blocking checkpoint write, minutes", rich_help_panel=_REL),
        restart_min: float = typer.Option(10.0, help="restart after a failure, minutes", rich_help_panel=_REL),
        goodput: float | None = typer.Option(None, help="override the modelled goodput", rich_help_panel=_REL),
        as_json: bool = typer.Option(False, "--json", help="print JSON for programs"),
        emit_launch: Path | None = typer.Option(None, help="write the torchrun + autarky train script here"),
    ) -> None:
        """GPUs, days, memory per GPU and layout, megawatts, cost and failures for training a model."""
        from pydantic import ValidationError

        from autarky.plan.launch import write_launch
        from autarky.plan.planner import PlanRequest, plan
        from autarky.plan.report import render

        values = {k: v for k, v in locals().items()
                  if k not in ("as_json", "emit_launch", "ValidationError", "PlanRequest", "plan", "render",
                               "write_launch")}
        try:
            request = PlanRequest(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "input"
            raise UserError(f"{flag}: {err['msg']}") from None
        result = plan(request)
        if emit_launch is not None:
            write_launch(result, emit_launch)
        if as_json:
            typer.echo(result.to_json())
        else:
            Console().print(render(result))
            if emit_launch is not None:
                Console().print(f"launch script written to [bold]{emit_launch}[/bold]")
