"""Memory per GPU for a parallel layout (planner.md §1.4). All figures in GB = 1e9 bytes.

Model states, mixed-precision AdamW: bf16 weights 2 B/param, bf16 gradients 2 B/param, optimizer 12 B/param
(fp32 master + two moments; 6 for 8-bit Adam, 8 for SGD+momentum). Tensor and pipeline parallelism divide all
three; ZeRO then shards over the data-parallel group (× context parallel, as FSDP does):
  ZeRO-0 (DDP) 16Ψ · ZeRO-1 4Ψ+12Ψ/N · ZeRO-2 2Ψ+14Ψ/N · ZeRO-3/FSDP 16Ψ/N (+ gathered layers, shown apart)
Expert parameters are further divided by expert parallelism and sharded over the expert-data group N/EP.

Activations per layer (Korthikanti et al. 2022, Table 2), s = sequence/CP, b = micro-batch, h, a = heads,
t = TP with sequence parallelism whenever t > 1:
  no recompute                (s·b·h/t)·(34 + 5·a·s/h); FlashAttention drops the 5·a·s/h term → 34·s·b·h/t
  selective recompute         34·s·b·h/t
  full recompute              2·s·b·h
With 1F1B pipelining the first stage holds the equivalent of all L layers, whatever p. The constants assume a
GeLU MLP with FFN = 4h; SwiGLU/GQA models differ somewhat. fp32 logits (4·s·b·V/t) count only without pipeline
parallelism, where the stage holding them is also the one holding the most activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autarky.plan.shape import ModelShape

Recompute = Literal["none", "selective", "full"]
OPTIMIZER_BYTES = {"adamw": 12.0, "adamw8bit": 6.0, "sgd": 8.0}
GB = 1e9


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    ep: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    def label(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}"] + ([f"CP{self.cp}"] if self.cp > 1 else []) + [f"DP{self.dp}"]
        return "/".join(parts) + (f"/EP{self.ep}" if self.ep > 1 else "")


@dataclass(frozen=True)
class MemorySettings:
    zero: int = 1
    recompute: Recompute = "selective"
    micro_batch: int = 1
    flash_attention: bool = True
    optimizer: str = "adamw"
    reserve_gb: float = 1.0


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: float
    gradients: float
    optimizer: float
    gathered: float
    activations: float
    logits: float
    capacity: float
    reserve: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.gathered + self.activations + self.logits

    @property
    def states(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def fits(self) -> bool:
        return self.total + self.reserve <= self.capacity

    def to_dict(self) -> dict[str, float | bool]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "gathered": self.gathered, "activations": self.activations, "logits": self.logits,
                "total": self.total, "capacity": self.capacity, "reserve": self.reserve, "fits": self.fits}


def model_states_bytes(params: float, shards: float, zero: int, optimizer_bytes: float = 12.0) -> tuple[
        float, float, float]:
    """(weights, gradients, optimizer) bytes for `params` on one GPU, sharded `shards` ways by ZeRO stage."""
    weights = 2 * params / (shards if zero >= 3 else 1)
    grads = 2 * params / (shards if zero >= 2 else 1)
    optim = optimizer_bytes * params / (shards if zero >= 1 else 1)
    return weights, grads, optim


def activation_bytes_per_layer(shape: ModelShape, layout: Layout, settings: MemorySettings) -> float:
    s = shape.seq_len / layout.cp
    b, h, a, t = settings.micro_batch, shape.hidden, shape.heads, layout.tp
    if settings.recompute == "full":
        return 2 * s * b * h
    if settings.recompute == "selective" or settings.flash_attention:
        return 34 * s * b * h / t
    return (s * b * h / t) * (34 + 5 * a * s / h)


def memory_per_gpu(shape: ModelShape, layout: Layout, settings: MemorySettings, capacity_gb: float) -> MemoryBreakdown:
    model_parallel = layout.tp * layout.pp
    dense = (shape.params - shape.expert_params) / model_parallel
    expert = shape.expert_params / (model_parallel * layout.ep)
    data_shards = layout.dp * layout.cp
    opt_bytes = OPTIMIZER_BYTES[settings.optimizer]
    w1, g1, o1 = model_states_bytes(dense, data_shards, settings.zero, opt_bytes)
    w2, g2, o2 = model_states_bytes(expert, max(1, data_shards // layout.ep), settings.zero, opt_bytes)
    # FSDP gathers one block while prefetching the next.
    gathered = 2 * 2 * shape.layer_params / layout.tp if settings.zero >= 3 else 0.0
    activations = shape.layers * activation_bytes_per_layer(shape, layout, settings)
    logits = 4 * shape.seq_len / layout.cp * settings.micro_batch * shape.vocab / layout.tp if layout.pp == 1 else 0.0
    return MemoryBreakdown(
        weights=(w1 + w2) / GB, gradients=(g1 + g2) / GB, optimizer=(o1 + o2) / GB, gathered=gathered / GB,
        activations=activations / GB, logits=logits / GB, capacity=capacity_gb, reserve=settings.reserve_gb)
