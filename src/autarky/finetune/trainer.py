"""`finetune(cfg)`: the train stage's loop over a base model and chat rows, for full fine-tuning and LoRA.

The loop (steps, schedule, FSDP2 under torchrun, DCP checkpoints, `resume = "auto"`, metrics.jsonl, the loss
curve, validation) is autarky.train's Trainer; this module only says how the model is built (the base's weights,
adapters on top), where batches come from (packed rows) and what the run dir records (the manifest).

    autarky finetune --base smollm2 --data chats.jsonl --out runs/ft
    torchrun --nproc_per_node=2 -m autarky finetune --config ft.toml --resume auto
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Any

import torch

from autarky.adapters import LoraConfig, apply_lora, fuse_swiglu
from autarky.contracts.rundir import CONFIG_FILE, TOKENIZER_DIR
from autarky.finetune.config import FinetuneConfig, dump_finetune_config
from autarky.finetune.memory import return_freed_memory
from autarky.finetune.packing import PackedBatches
from autarky.finetune.prepare import MANIFEST_FILE, FinetunePlan, prepare
from autarky.model.config import ModelConfig, active_parameter_count
from autarky.model.hf import TOKENIZER_FILES, load_hf_folder
from autarky.train.loop import BatchSource, RunSummary, Trainer, run_trainer
from autarky.train.parallelize import parallelize


@dataclass(frozen=True)
class FinetuneSummary:
    run: RunSummary
    counts: dict[str, int]  # records, train/val examples, truncated, dropped, rows, trained tokens
    method: str


def finetune(cfg: FinetuneConfig) -> FinetuneSummary:
    """Validate, then fine-tune (or resume) the run described by `cfg`; writes only into cfg.run.out. With
    run.return_freed_memory, fixes glibc's malloc thresholds for the process (finetune/memory.py)."""
    if cfg.run.return_freed_memory:
        return_freed_memory()
    plan = prepare(cfg)
    return FinetuneSummary(run_trainer(FinetuneTrainer, plan), plan.counts, cfg.model.method)


class FinetuneTrainer(Trainer):
    plan: FinetunePlan  # type: ignore[assignment]

    def __init__(self, plan: FinetunePlan, mesh: Any) -> None:
        super().__init__(plan, mesh)  # type: ignore[arg-type]
        counts, seq_len = plan.counts, self.cfg.data.seq_len
        share = counts["train_trained_tokens"] / max(1, counts["train_rows"] * seq_len)
        adapters = 0 if self.cfg.model.method == "full" else sum(
            p.numel() for p in self.model.parameters() if p.requires_grad)
        self.flops_per_token = finetune_flops_per_token(plan.model_cfg, seq_len, trained_share=share,
                                                        adapter_params=adapters, full=self.cfg.model.method == "full")

    def build_model(self, mesh: Any) -> torch.nn.Module:
        # Every rank loads the whole base (fine up to a few billion parameters), then FSDP2 shards it.
        model, _ = load_hf_folder(self.plan.base_folder, torch.float32, "cpu")
        model.train()
        if self.cfg.model.method != "full":
            model = _with_adapters(model, self.cfg)
        model.to(self.device)
        lean_activations(model, self.device)
        return parallelize(model, mesh, compile=self.compile, bf16=self.bf16,  # type: ignore[arg-type]
                           activation_checkpointing=self.cfg.parallel.activation_checkpointing)

    def batch_source(self) -> BatchSource:
        d = self.cfg.data
        return PackedBatches(self.plan.train_rows, self.plan.val_rows, batch_size=d.batch_size,
                             grad_accum=d.grad_accum, dp_size=self.topo.dp_size, dp_rank=self.topo.dp_rank,
                             seed=self.cfg.run.seed, eval_batches=d.eval_batches)  # fmt: skip

    def write_run_dir(self) -> None:
        run_dir = self.plan.run_dir
        (run_dir / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(dump_finetune_config(self.cfg))
        (run_dir / MANIFEST_FILE).write_text(json.dumps(self.plan.manifest, indent=2) + "\n")
        for name in TOKENIZER_FILES:  # the base's own tokenizer and template, so the run dir alone exports
            if (self.plan.base_folder / name).is_file():
                shutil.copyfile(self.plan.base_folder / name, run_dir / TOKENIZER_DIR / name)

    def checkpoint_meta(self) -> dict[str, Any]:
        """`model` is the base's shape (the run-dir contract loads a full fine-tune's weights with it); `lora`,
        present on adapter runs only, tells export to write an adapter or merge one."""
        meta: dict[str, Any] = {"model": self.plan.model_cfg.to_dict(), "preset": "finetune",
                                "method": self.cfg.model.method,
                                "base": {k: self.plan.manifest["base"][k] for k in ("spec", "folder", "sha256")}}
        if self.cfg.model.method != "full":
            meta["lora"] = lora_config(self.cfg).model_dump(mode="json")
        return meta


def finetune_flops_per_token(cfg: ModelConfig, seq_len: int, *, trained_share: float, adapter_params: int,
                             full: bool) -> float:
    """Model FLOPs per row token of a fine-tuning step: the numerator of its MFU (PaLM's 6N + 12·L·H·E·T, counted
    for what the step really computes). The head runs only on the trained share of tokens. A frozen weight costs
    4 FLOPs per parameter (forward, and backward to its input only: no weight gradient), not 6; the adapters are
    trained matmuls (6 per parameter). Activation recompute is not counted, as in MFU everywhere."""
    head = cfg.vocab_size * cfg.dim
    body = active_parameter_count(cfg, include_embedding=False) - (0 if cfg.tie_embeddings else head)
    per_param = 6 if full else 4
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return per_param * (body + head * trained_share) + 6 * adapter_params + attention


def lean_activations(model: torch.nn.Module, device: torch.device) -> None:
    """Keep fewer activations for backward without recomputing any matmul, from outside the model: each SwiGLU
    keeps its gate and up projections only (adapters/swiglu.py), and on CPU attention shares each key/value head
    across its query group (SDPA's enable_gqa) instead of keeping repeated copies (CUDA's fused kernels do not all
    take enable_gqa)."""
    from autarky.model.llama import Attention

    fuse_swiglu(model)
    if device.type == "cpu":
        for module in model.modules():
            if isinstance(module, Attention):
                module.share_kv_heads = True


def lora_config(cfg: FinetuneConfig) -> LoraConfig:
    """The adapters' config for a LoRA or QLoRA-style run (the latter keeps the frozen base in int8)."""
    return LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=cfg.lora.targets,
                      base_int8=cfg.model.method == "qlora")  # fmt: skip


def _with_adapters(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.nn.Module:
    # Seeded: every rank (and a resumed attempt, before its checkpoint overwrites them) starts from the same A.
    return apply_lora(model, lora_config(cfg), seed=cfg.run.seed)
