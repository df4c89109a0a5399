"""Expert parallelism, applied from outside the model: each rank of an EP group keeps E/ep of every MoE layer's
routed experts (the `[E, H, D]` weights sliced on dim 0, torchtitan's Shard(0)) and tokens travel to the rank that
holds their expert and back in two `all_to_all_single` exchanges per layer: the counts, then the tokens (the
autograd form, so gradients travel back the same way). Router, shared experts and the rest stay replicated.

Not yet wired into `autarky train`'s mesh (no --ep flag, no DTensor checkpoint resharding): this is the dispatch
and combine, checked against EP=1 in tests/train/test_moe.py.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from autarky.model.moe import GroupedExperts, moe_layers


class ExpertParallelExperts(nn.Module):
    """A rank's share of GroupedExperts behind the dispatch/combine exchanges; called like GroupedExperts."""

    def __init__(self, experts: GroupedExperts, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.group, self.ep, rank = group, dist.get_world_size(group), dist.get_rank(group)
        n_experts = experts.w1.shape[0]
        if n_experts % self.ep:
            raise ValueError(f"{n_experts} experts cannot be split over an expert-parallel group of {self.ep}")
        self.local = n_experts // self.ep
        self.local_experts = GroupedExperts(self.local, experts.w1.shape[2], experts.w1.shape[1])
        span = slice(rank * self.local, (rank + 1) * self.local)
        with torch.no_grad():
            for name in ("w1", "w2", "w3"):
                getattr(self.local_experts, name).copy_(getattr(experts, name)[span])

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x (N, D) sorted by global expert, counts (E,) → outputs (N, D) in x's order."""
        # Exchange 1: how many tokens each rank sends to each of my local experts.
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.group)
        send_splits = counts.view(self.ep, self.local).sum(1).tolist()
        recv_by_rank = recv_counts.view(self.ep, self.local)  # (source rank, local expert)
        recv_splits = recv_by_rank.sum(1).tolist()
        # Exchange 2: the tokens themselves (autograd: their gradients come back in the backward pass).
        received = dist_fn.all_to_all_single(x.new_empty(sum(recv_splits), x.shape[1]), x, recv_splits,
                                             send_splits, group=self.group)  # fmt: skip
        # Arrived grouped by (source rank, local expert); the experts want local-expert-major order.
        segment = torch.repeat_interleave(torch.arange(recv_by_rank.numel(), device=x.device), recv_by_rank.flatten())
        order = torch.argsort(segment % self.local, stable=True)
        out = self.local_experts(received[order], recv_by_rank.sum(0))
        out = out[torch.argsort(order)]  # back to arrival order
        return dist_fn.all_to_all_single(x.new_empty(x.shape), out, send_splits, recv_splits, group=self.group)


def apply_expert_parallel(model: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Shard every MoE layer's routed experts over `group`, in place; returns the model."""
    if dist.get_world_size(group) == 1:
        return model
    for layer in moe_layers(model).values():
        layer.experts = ExpertParallelExperts(layer.experts, group)  # type: ignore[assignment]
    return model
