"""`autarky model info` (a preset's shape, parameters and FLOPs), `autarky export` and `autarky sample`."""

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def model_info(name: str) -> dict:
    # Imported here so `autarky --help` and the other stages' commands start without loading torch.
    from autarky.model.llama import flops_per_token, parameter_count
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
        "non_embedding_parameters": parameter_count(cfg, include_embedding=False),
        "train_flops_per_token": flops_per_token(cfg),
    }


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Model presets (the Llama architecture, nano … 405b).", no_args_is_help=True)
    app.add_typer(model_app, name="model")

    @model_app.command("info")
    def info(
        name: str = typer.Argument(..., help="preset: nano, micro, small, 1b, 8b, 70b, 405b"),
        as_json: bool = typer.Option(False, "--json", help="print JSON for programs"),
    ) -> None:
        """Layers, width, heads, parameters and training FLOPs per token (built on the meta device)."""
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
        Console().print(table)

    @app.command("export")
    def export(
        run_dir: Path = typer.Argument(..., help="a training run dir (the --out of `autarky train`)"),
        out: Path = typer.Option(..., "--out", help="the Hugging Face folder to write (must not exist or be empty)"),
        step: int | None = typer.Option(None, "--step", help="checkpoint step (default: the newest)"),
        dtype: str = typer.Option("float32", "--dtype", help="weights dtype: float32 or bfloat16"),
    ) -> None:
        """Write a run's checkpoint as a Hugging Face LlamaForCausalLM folder (transformers and vLLM load it)."""
        from autarky.model.export import export_run, parse_dtype

        folder, step_done = export_run(run_dir, out, step, parse_dtype(dtype))
        typer.echo(f"exported step {step_done} of {run_dir} to {folder}")

    @app.command("sample")
    def sample(
        model: str = typer.Argument(..., help="a run dir, an HF folder, a .gguf file, or smollm2"),
        prompt: str = typer.Option(..., "--prompt", help="the text to continue (or the user message with --chat)"),
        max_tokens: int = typer.Option(128, "--max-tokens", help="most tokens to generate"),
        temperature: float = typer.Option(0.8, "--temperature", help="0 = greedy"),
        top_p: float = typer.Option(0.95, "--top-p", help="nucleus sampling mass"),
        seed: int | None = typer.Option(None, "--seed", help="sampling seed, for repeatable output"),
        chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the model's chat template"),
        step: int | None = typer.Option(None, "--step", help="checkpoint step of a run dir (default: newest)"),
        dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16"),
        device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)"),
    ) -> None:
        """Generate text from a model with a KV cache, streaming it to stdout."""
        import torch

        from autarky.model.export import parse_dtype
        from autarky.model.generate import SamplingParams, generate_text
        from autarky.model.hf import eos_token_ids
        from autarky.model.source import load_model
        from autarky.model.tokenizer import load_tokenizer, render_chat

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        llama, folder = load_model(model, step, parse_dtype(dtype), device)
        text = render_chat(folder, [{"role": "user", "content": prompt}]) if chat else prompt
        if not chat:
            sys.stdout.write(prompt)
        for piece in generate_text(llama, load_tokenizer(folder), text, params, eos_token_ids(folder)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
