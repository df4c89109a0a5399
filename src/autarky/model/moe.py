"""The mixture-of-experts feed-forward in plain PyTorch: a token-choice top-k router, routed experts stacked as
`[E, H, D]` tensors, optional shared experts, and load balancing without an auxiliary loss (DeepSeek-V3).

The router scores every expert (softmax or sigmoid), each token picks its top-k experts by score plus a per-expert
`expert_bias`, and the chosen experts' raw scores (renormalised when `route_norm`) weight their outputs. The bias is
a buffer, never a gradient: `update_expert_bias` moves it, between optimizer steps, towards the experts that got
fewer tokens. Token choice has no capacity, so no token is ever dropped. Expert parallelism and the all-reduce of
token counts over data-parallel ranks are applied from outside (autarky.train.parallelize).

Shapes: N = tokens, D = dim, H = expert hidden width, E = routed experts, k = experts per token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from autarky.model.config import ModelConfig


class FeedForward(nn.Module):
    """SwiGLU: the dense layers' feed-forward and the shared experts."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GroupedExperts(nn.Module):
    """E SwiGLU experts with their weights stacked (w1/w3 `[E, H, D]`, w2 `[E, D, H]`, nn.Linear's layout per
    expert), so one grouped matmul runs them all and expert parallelism shards dim 0."""

    # torch._grouped_mm where the device takes it; the per-expert loop is kept for comparison and as the fallback.
    use_grouped_mm = True

    def __init__(self, n_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.w3 = nn.Parameter(torch.empty(n_experts, hidden, dim))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x (N, D) sorted by expert, `counts` (E,) tokens of each expert in that order; returns (N, D)."""
        if self.use_grouped_mm and _grouped_mm_fits(x):
            return self.forward_grouped(x, counts)
        return self.forward_loop(x, counts)

    def forward_grouped(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offsets = torch.cumsum(counts, 0, dtype=torch.int32)
        # Gate and up in one grouped matmul (one wider GEMM per expert, half the calls, forward and backward); the
        # weights stay two parameters, so checkpoints, exports and expert-parallel slicing keep their names.
        w13 = torch.cat((self.w1, self.w3), dim=1).to(x.dtype).transpose(-2, -1)  # (E, D, 2H)
        gate, up = torch._grouped_mm(x, w13, offs=offsets).chunk(2, dim=-1)  # (N, H) each
        return torch._grouped_mm(F.silu(gate) * up, self.w2.to(x.dtype).transpose(-2, -1), offs=offsets)  # (N, D)

    def forward_loop(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        outs = []
        for e, rows in enumerate(x.split(counts.tolist())):
            h = F.silu(rows @ self.w1[e].to(x.dtype).T) * (rows @ self.w3[e].to(x.dtype).T)
            outs.append(h @ self.w2[e].to(x.dtype).T)
        return torch.cat(outs)


def _grouped_mm_fits(x: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        # Eager takes fp32 and bf16; inductor lowers only bf16 (torch 2.13), so a compiled fp32 model loops.
        return x.dtype == torch.bfloat16 or (x.dtype == torch.float32 and not torch.compiler.is_compiling())
    # CUDA's kernel is bf16 on Hopper and later (sm90+).
    return x.device.type == "cuda" and x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9


class MoE(nn.Module):
    """The feed-forward of a sparse layer: router, routed experts, shared experts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.n_active_experts
        self.score_func, self.route_norm, self.route_scale = cfg.score_func, cfg.route_norm, cfg.route_scale
        self.aux_loss_coef, self.z_loss_coef = cfg.aux_loss_coef, cfg.z_loss_coef
        self.router = nn.Linear(cfg.dim, cfg.n_experts, bias=False)
        self.experts = GroupedExperts(cfg.n_experts, cfg.dim, cfg.moe_ffn_dim)
        if cfg.n_shared_experts:
            self.shared = FeedForward(cfg.dim, cfg.moe_ffn_dim * cfg.n_shared_experts)
        # Persistent: a resumed run continues with the same balance. Selection only; gate weights never see it.
        self.register_buffer("expert_bias", torch.zeros(cfg.n_experts, dtype=torch.float32))
        # Tokens each expert received since the last bias update (training forwards only).
        self.register_buffer("tokens_per_expert", torch.zeros(cfg.n_experts, dtype=torch.float32), persistent=False)
        self.aux_loss: torch.Tensor | None = None  # the last training forward's weighted auxiliary losses

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) → gate weights (N, k) fp32, chosen experts (N, k), scores (N, E) fp32."""
        logits = self.router(x).float()
        scores = logits.softmax(-1) if self.score_func == "softmax" else logits.sigmoid()
        chosen = torch.topk(scores + self.expert_bias, self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.route_norm:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * self.route_scale, chosen, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D)
        weights, chosen, scores = self.route(x)
        flat = chosen.flatten()  # (N·k,) token-major
        # Counted by scatter_add rather than bincount: a fixed (E,) shape, no device sync on CUDA.
        counts = torch.zeros(self.n_experts, dtype=torch.long, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        order = torch.argsort(flat, stable=True)  # expert-major, tokens in order within each expert
        token = order // self.top_k
        # index_select, not x[token]: its backward is an index_add (fast) instead of an accumulating index_put.
        out = self.experts(x.index_select(0, token), counts)  # (N·k, D)
        out = out * weights.flatten().index_select(0, order).unsqueeze(1).to(x.dtype)
        y = torch.zeros_like(x).index_add_(0, token, out)
        if hasattr(self, "shared"):
            y = y + self.shared(x)
        if self.training:
            with torch.no_grad():
                self.tokens_per_expert += counts.to(self.tokens_per_expert.dtype)
            losses = []
            if self.aux_loss_coef:
                losses.append(self.aux_loss_coef * balance_loss(scores, counts, self.top_k))
            if self.z_loss_coef:  # the router's logits once more: route() keeps only their scores
                losses.append(self.z_loss_coef * router_z_loss(self.router(x).float()))
            self.aux_loss = torch.stack(losses).sum() if losses else None
        return y.reshape(shape)


def balance_loss(scores: torch.Tensor, counts: torch.Tensor, top_k: int) -> torch.Tensor:
    """The classic auxiliary loss (Switch / GShard): E · Σ_e f_e · P_e, f the fraction of routed slots that went to
    expert e, P its mean router probability; 1 when uniform."""
    n_experts = scores.shape[-1]
    probs = scores / scores.sum(-1, keepdim=True)  # sigmoid scores as a distribution too
    fraction = counts.float() / (scores.shape[0] * top_k)
    return n_experts * (fraction * probs.mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss (Zoph et al. 2022, eq. 5): the mean over tokens of logsumexp(logits)², which keeps
    the router's logits small (and its softmax stable in low precision) without changing which experts win."""
    return logits.logsumexp(-1).square().mean()


def moe_layers(model: nn.Module) -> dict[str, MoE]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoE)}


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the sparse layers' auxiliary losses (balance, z) from the last training forward (None when none is on)."""
    losses = [m.aux_loss for m in moe_layers(model).values() if m.aux_loss is not None]
    for m in moe_layers(model).values():
        m.aux_loss = None
    return torch.stack(losses).sum() if losses else None


def update_expert_bias(model: nn.Module, rate: float,
                       all_reduce: Callable[[torch.Tensor], None] | None = None) -> dict[str, list[float]]:  # fmt: skip
    """Move each sparse layer's expert_bias by rate · sign(mean load − load) (centred) from the tokens counted since
    the last call, then reset the counts; returns each layer's per-expert load (fractions of its routed slots).
    Call it once per optimizer step (so gradient accumulation counts all micro-batches); `all_reduce` sums the
    counts over data-parallel ranks so every rank moves the same bias."""
    loads = {}
    with torch.no_grad():
        for name, layer in moe_layers(model).items():
            counts = layer.tokens_per_expert
            if all_reduce is not None:
                all_reduce(counts)
            total = counts.sum()
            if total > 0:
                loads[name] = (counts / total).tolist()
                if rate:
                    delta = rate * torch.sign(counts.mean() - counts)
                    layer.expert_bias += delta - delta.mean()
            counts.zero_()
    return loads


def load_summary(loads: dict[str, list[float]]) -> dict[str, float | list[float]]:
    """Metrics for a step: the per-expert load averaged over layers, the worst layer's max/mean imbalance, and the
    dropped tokens (always 0: token choice has no capacity)."""
    if not loads:
        return {}
    per_layer = torch.tensor(list(loads.values()))  # (layers, E)
    imbalance = (per_layer.max(-1).values / per_layer.mean(-1)).max().item()
    return {"expert_load": [round(v, 5) for v in per_layer.mean(0).tolist()],
            "expert_imbalance": round(imbalance, 4), "dropped_tokens": 0}
