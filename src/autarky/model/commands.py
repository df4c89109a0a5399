"""`autarky model info`: a preset's shape, parameters and FLOPs. `register` returns the `model` group, onto which
the export stage adds `model export` and `model sample` (the model package is a leaf and cannot import them)."""

import json

import typer
from rich.table import Table

from autarky.clikit import TableConsole


def model_info(name: str) -> dict:
    # Imported here so `autarky --help` and the other stages' commands start without loading torch.
    from autarky.model.config import active_parameter_count, flops_per_token, parameter_count
    from autarky.model.sizes import build_on_meta, preset

    cfg = preset(name)
    model = build_on_meta(cfg)
    counted = sum(p.numel() for p in model.parameters())  # shared (tied) tensors are yielded once
    assert counted == parameter_count(cfg), "shape formula and built model disagree"
    return {
        "preset": name,
        **cfg.to_dict(),
        "head_dim": cfg.head_dim,
        "parameters": counted,
        "active_parameters": active_parameter_count(cfg),
        "non_embedding_parameters": parameter_count(cfg, include_embedding=False),
        "train_flops_per_token": flops_per_token(cfg),
    }


def register(app: typer.Typer) -> typer.Typer:
    """Add `autarky model` to the app; returns the group for the later stages' model commands."""
    model_app = typer.Typer(help="Model presets, export of a run and sampling (the Llama architecture and the open families built on it).",
                            no_args_is_help=True)
    app.add_typer(model_app, name="model")

    @model_app.command("info")
    def info(
        name: str = typer.Argument(..., help="preset: nano, micro, small, 1b, 8b, 70b, 405b, or a published model (llama3.2-1b, "
                                                    "llama3.1-8b, mistral-7b, qwen2.5-0.5b, qwen2.5-7b, qwen3-0.6b, qwen3-8b), or a "
                                                    "mixture of experts (moe-nano, qwen3-30b-a3b, qwen3-235b-a22b, "
                                                    "deepseek-v3-like)"),
        as_json: bool = typer.Option(False, "--json", help="print JSON for programs"),
    ) -> None:
        """Layers, width, heads, total and active parameters and training FLOPs per token (built on the meta device)."""
        info = model_info(name)
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        table = Table(title=f"preset {name}", show_header=False)
        for key, value in info.items():
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
            if key == "train_flops_per_token":
                shown = f"{value:.3e}"
            table.add_row(key, shown)
        TableConsole().print(table)

    return model_app
