"""LoRA fine-tuning runs (`autarky finetune`, method lora or qlora) out of their run dir.

Such a run's checkpoints hold the whole adapted model (base weights, fp32 or int8, plus lora_A/lora_B) and its
meta.json carries the adapters' config under "lora": that is how the run-dir contract tells them apart. Export
writes either the adapters in PEFT's format (PEFT and vLLM load them onto the base) or, merged in fp32, a plain
HF folder; everything that loads a run dir as one model (sample, serve) gets the merged model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from autarky.adapters import LoraConfig, apply_lora, merge_lora, save_adapter
from autarky.contracts.rundir import TOKENIZER_DIR, Checkpoint, read_meta, single_process_dcp
from autarky.model.config import ModelConfig
from autarky.model.hf import check_output_folder, save_hf_folder
from autarky.model.llama import Llama


def is_lora_checkpoint(ckpt: Checkpoint) -> bool:
    return "lora" in read_meta(ckpt)


def load_lora_checkpoint(ckpt: Checkpoint) -> tuple[Llama, LoraConfig, dict[str, Any]]:
    """(the adapted model in eval mode on CPU, its LoRA config, the checkpoint's meta)."""
    meta = read_meta(ckpt)
    cfg = LoraConfig(**meta["lora"])
    model = apply_lora(Llama(ModelConfig(**meta["model"])), cfg)
    state = model.state_dict()
    with single_process_dcp():
        dcp.load({"model": state}, checkpoint_id=ckpt.path)
    model.load_state_dict(state)
    return model.eval(), cfg, meta


def merged_model(ckpt: Checkpoint) -> Llama:
    """The run's model with its adapters folded into the base weights (in fp32)."""
    model, _, _ = load_lora_checkpoint(ckpt)
    return merge_lora(model)  # type: ignore[return-value]


def export_lora_run(run_dir: Path, ckpt: Checkpoint, out_dir: Path, merge: bool, dtype: torch.dtype) -> Path:
    """The adapters as a PEFT folder (adapter_config.json + adapter_model.safetensors), or merged as an HF folder."""
    check_output_folder(out_dir)
    model, cfg, meta = load_lora_checkpoint(ckpt)
    if merge:
        return save_hf_folder(merge_lora(model), Path(run_dir) / TOKENIZER_DIR, out_dir, dtype)  # type: ignore[arg-type]
    return save_adapter(model, cfg, out_dir, base_model=str(meta.get("base", {}).get("spec", "")))
