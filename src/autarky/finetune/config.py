"""The fine-tuning config: one typed tree, read from a TOML file with CLI overrides, like `autarky train`'s.

    [model]      base = "smollm2"; method = "lora" | "qlora" | "full"
    [lora]       rank, alpha, dropout, targets
    [data]       path (a JSONL file or a folder of them), seq_len, batch_size, grad_accum, packing, truncation,
                 val_fraction, eval_batches
    [optim] [schedule] [parallel] [checkpoint]   the same sections as `autarky train` (fine-tuning defaults)
    [run]        out, steps or epochs, seed, eval_every, log_every, device, precision

The names follow what axolotl and torchtune users know (lora_r → lora.rank, sequence_len → data.seq_len,
sample_packing → data.packing, val_set_size → data.val_fraction). RUN_DIR/config.toml holds the resolved tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autarky.train.config import (
    CheckpointSection,
    OptimSection,
    ParallelSection,
    RunSection,
    ScheduleSection,
    overridden,
    read_config_file,
    validated,
)
from autarky.train.config import dump_config as _dump_tree

Method = Literal["lora", "qlora", "full"]
# Every linear layer of a block (LoRA Without Regret: attention-only LoRA underperforms); our names, or PEFT's
# (q_proj ... down_proj), or "all-linear".
ALL_LINEAR = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BaseSection(_Section):
    base: str | None = Field(None, description="the model to start from: an HF folder, a .gguf file, a run dir "
                                               "or smollm2")  # fmt: skip
    method: Method = Field("lora", description="lora, qlora (LoRA over a frozen int8 base) or full fine-tuning")


class LoraSection(_Section):
    rank: int = Field(16, gt=0, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    targets: list[str] = Field(list(ALL_LINEAR), description="linear layers to adapt: wq wk wv wo w1 w2 w3, PEFT's "
                                                               "q_proj ... down_proj, or all-linear")


class FinetuneDataSection(_Section):
    path: Path | None = Field(None, description="a JSONL file, or a folder of them, of {messages} or "
                                                "{prompt, completion} records")  # fmt: skip
    seq_len: int | None = Field(None, gt=1, description="tokens per training row (default: 512, or the base's "
                                                        "context when shorter)")
    batch_size: int = Field(8, gt=0, description="GLOBAL rows per optimizer step (all ranks, all micro-steps)")
    grad_accum: int = Field(1, gt=0, description="micro-steps per optimizer step")
    packing: bool = Field(True, description="pack short examples into full rows (no attention across them)")
    truncation: Literal["error", "truncate", "drop"] = Field(
        "error", description="an example longer than seq_len: error, truncate it, or drop it")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of records held out for validation loss")
    eval_batches: int = Field(4, gt=0, description="validation = at most this many global batches of rows")


class FinetuneOptimSection(OptimSection):
    lr: float = Field(2e-4, gt=0, description="peak learning rate (LoRA wants ~10x full fine-tuning's)")
    weight_decay: float = Field(0.0, ge=0)


class FinetuneScheduleSection(ScheduleSection):
    warmup_steps: int = Field(10, ge=0)


class FinetuneCheckpointSection(CheckpointSection):
    every: int = Field(50, ge=0, description="DCP checkpoint every N steps (0: only at the end/on signal)")


class FinetuneRunSection(RunSection):
    steps: int | None = Field(None, gt=0, description="optimizer steps in total (default: from epochs)")
    epochs: float = Field(1.0, gt=0, description="passes over the training rows, when steps is not given")
    eval_every: int = Field(50, ge=0, description="validation every N steps (0: only at the end)")
    log_every: int = Field(5, gt=0)
    return_freed_memory: bool = Field(
        False, description="fix glibc's malloc thresholds so freed activations go back to the OS: about half the "
                           "peak resident memory, but an mmap per large tensor (measured: about half the CPU "
                           "tokens/s on SmolLM2 LoRA); see finetune/memory.py")


class FinetuneConfig(_Section):
    model: BaseSection = BaseSection()
    lora: LoraSection = LoraSection()
    data: FinetuneDataSection = FinetuneDataSection()
    optim: FinetuneOptimSection = FinetuneOptimSection()
    schedule: FinetuneScheduleSection = FinetuneScheduleSection()
    parallel: ParallelSection = ParallelSection()
    checkpoint: FinetuneCheckpointSection = FinetuneCheckpointSection()
    run: FinetuneRunSection = FinetuneRunSection()

    def with_overrides(self, overrides: dict[str, Any]) -> FinetuneConfig:
        """A copy with dotted keys replaced (e.g. {"lora.rank": 8}); None values are ignored."""
        return _validated(overridden(self.model_dump(), overrides), "command-line options")


def load_finetune_config(path: Path) -> FinetuneConfig:
    """Read a fine-tuning TOML (any subset of sections and keys)."""
    return read_config_file(path, FinetuneConfig)


def _validated(tree: dict, origin: str) -> FinetuneConfig:
    return validated(tree, origin, FinetuneConfig)


def dump_finetune_config(cfg: FinetuneConfig) -> str:
    return _dump_tree(cfg)  # type: ignore[arg-type]  # the same TOML writer: it reads only model_dump()
