"""`autarky model export` (a run's checkpoint as an HF folder) and `autarky model sample` (generate from any
model), on the `model` group; the old top-level `autarky export` / `autarky sample` stay as hidden aliases."""

import sys
from pathlib import Path

import typer

from autarky.clikit import hidden_alias


def register(app: typer.Typer, model_app: typer.Typer) -> None:
    """Add `model export` and `model sample` to the `model` group (and the hidden top-level aliases to `app`)."""

    def export(
        run_dir: Path = typer.Argument(..., help="a training run dir (the --out of `autarky train` or "
                                       "`autarky finetune`)"),
        out: Path = typer.Option(..., "--out", help="the Hugging Face folder to write (must not exist or be empty)"),
        step: int | None = typer.Option(None, "--step", help="checkpoint step (default: the newest)"),
        dtype: str = typer.Option("float32", "--dtype", help="weights dtype: float32 or bfloat16"),
        merge: bool = typer.Option(False, "--merge", help="a LoRA fine-tune: write the base with the adapters "
                                   "merged (in fp32) as a plain HF folder, instead of the PEFT adapter"),
    ) -> None:
        """Write a run's checkpoint as a Hugging Face folder of its family's class (LlamaForCausalLM for our own
        dense models; a mixture of experts as the transformers MoE class whose routing is exactly its own), which
        transformers and vLLM load; a LoRA fine-tune's run as a PEFT adapter folder (adapter_config.json +
        adapter_model.safetensors)."""
        from autarky.export.hf_folder import export_run, parse_dtype

        folder, step_done = export_run(run_dir, out, step, parse_dtype(dtype), merge=merge)
        what = "adapter" if (folder / "adapter_config.json").is_file() else "model"
        typer.echo(f"exported step {step_done} of {run_dir} to {folder} ({what})")

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

        from autarky.export.hf_folder import parse_dtype
        from autarky.export.source import load_model
        from autarky.model.generate import generate_text
        from autarky.model.hf import eos_token_ids
        from autarky.model.sampling import SamplingParams
        from autarky.model.tokenizer import load_hf_folder_tokenizer, render_chat

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        llama, folder = load_model(model, step, parse_dtype(dtype), device)
        text = render_chat(folder, [{"role": "user", "content": prompt}]) if chat else prompt
        if not chat:
            sys.stdout.write(prompt)
        for piece in generate_text(llama, load_hf_folder_tokenizer(folder), text, params, eos_token_ids(folder)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")

    for name, command in (("export", export), ("sample", sample)):
        model_app.command(name)(command)
        hidden_alias(app, name, command, f"model {name}")
