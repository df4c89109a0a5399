"""Training run → Hugging Face folder (`autarky export`); the run dir is read through `autarky.contracts.rundir`."""

from __future__ import annotations

from pathlib import Path

import torch

from autarky.contracts.rundir import TOKENIZER_DIR, find_checkpoint, is_run_dir, load_model_from_run
from autarky.errors import UserError
from autarky.export.lora_run import export_lora_run, is_lora_checkpoint, merged_model
from autarky.model.hf import check_output_folder, save_hf_folder
from autarky.model.llama import Llama

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}") from None


def load_run(run_dir: Path, step: int | None = None) -> tuple[Llama, Path, int]:
    """(model, tokenizer dir, step) of a run's newest (or `step`) checkpoint, through the run-dir contract."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a training run dir (needs config.toml and checkpoints/); "
                        "give the --out folder of `autarky train`")
    ckpt = find_checkpoint(run_dir, step)
    if is_lora_checkpoint(ckpt):  # a LoRA fine-tune: one model means the adapters merged into the base
        return merged_model(ckpt), run_dir / TOKENIZER_DIR, ckpt.step
    model, _, tokenizer_dir, step = load_model_from_run(run_dir, ckpt.step)
    return model, tokenizer_dir, step


def export_run(run_dir: Path, out_dir: Path, step: int | None = None, dtype: torch.dtype = torch.float32,
               merge: bool = False) -> tuple[Path, int]:  # fmt: skip
    """Write the run's newest (or `step`) checkpoint as an HF folder at `out_dir`; returns (out_dir, step). A LoRA
    fine-tune's run is written as a PEFT adapter folder, or with `merge` as the HF folder of the merged model."""
    check_output_folder(out_dir)  # fail before the slow load
    if is_run_dir(run_dir):
        ckpt = find_checkpoint(run_dir, step)
        if is_lora_checkpoint(ckpt):
            return export_lora_run(Path(run_dir), ckpt, out_dir, merge, dtype), ckpt.step
    model, tokenizer_dir, step = load_run(run_dir, step)
    return save_hf_folder(model, tokenizer_dir, out_dir, dtype), step
