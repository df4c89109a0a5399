"""Where a model comes from: `resolve_model_source(spec)` turns what a user typed into an HF folder.

Accepted forms: an HF folder (used as is), a `.gguf` file (dequantized once into AUTARKY_HOME/models), a training
run dir (its newest checkpoint exported once into AUTARKY_HOME/exports), and the alias `smollm2`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from autarky.contracts.rundir import META_FILE, find_checkpoint, is_run_dir
from autarky.errors import UserError
from autarky.export.hf_folder import export_run, load_run
from autarky.model.gguf_import import import_gguf, smollm2_gguf_path
from autarky.model.hf import load_hf_folder
from autarky.model.llama import Llama
from autarky.paths import autarky_home

ALIASES = ("smollm2",)
ACCEPTED = "an HF model folder (with config.json), a .gguf file, a training run dir, or the alias smollm2"


def resolve_model_source(spec: str | Path) -> Path:
    """An HF folder for `spec` (see the module doc); UserError naming the accepted forms otherwise."""
    text = str(spec)
    if text in ALIASES:
        return import_gguf(smollm2_gguf_path())
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return import_gguf(path)
    if is_run_dir(path):
        return exported_run_folder(path)
    what = "does not exist" if not path.exists() else "is none of these"
    raise UserError(f"model {text!r} {what}; give {ACCEPTED}")


def exported_run_folder(run_dir: Path, step: int | None = None) -> Path:
    """The run's newest (or `step`) checkpoint as an HF folder cached under AUTARKY_HOME/exports, keyed by the run's
    path, the step and the checkpoint's meta.json (so a retrained run with the same step is exported again)."""
    run_dir = Path(run_dir).resolve()
    ckpt = find_checkpoint(run_dir, step)
    key = hashlib.sha256(str(run_dir).encode() + (ckpt.path / META_FILE).read_bytes()).hexdigest()[:12]
    out_dir = autarky_home() / "exports" / f"{run_dir.name}-{key}-step-{ckpt.step}"
    if out_dir.is_dir() and any(out_dir.iterdir()):  # folders appear complete or not at all (atomic rename)
        return out_dir
    try:
        return export_run(run_dir, out_dir, ckpt.step, merge=True)[0]  # a LoRA run as one model: merged
    except (OSError, UserError):
        if out_dir.is_dir() and any(out_dir.iterdir()):  # another process exported it at the same moment
            return out_dir
        raise


def load_model(spec: str | Path, step: int | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> tuple[Llama, Path]:
    """Our Llama (eval mode) for any accepted form, and the folder holding its tokenizer files. A run dir is
    loaded straight from its checkpoint (`step` or the newest), without writing an export."""
    path = Path(str(spec)).expanduser()
    if is_run_dir(path):
        model, tokenizer_dir, _ = load_run(path, step)
        return model.to(device=device, dtype=dtype), tokenizer_dir
    if step is not None:
        raise UserError(f"--step applies to training run dirs only, and {spec} is not one")
    folder = resolve_model_source(spec)
    return load_hf_folder(folder, dtype, device)[0], folder
