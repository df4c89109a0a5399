"""Expert parallelism, applied from outside the model: each rank of an EP group keeps E/ep of every MoE layer's
routed experts (the `[E, H, D]` weights as DTensors sharded on dim 0, torchtitan's Shard(0)) and tokens travel to
the rank that holds their expert and back in two `all_to_all_single` exchanges per layer: the counts, then the
tokens (the autograd form, so gradients travel back the same way). Router, shared experts and the rest stay with
FSDP2 over all data-parallel ranks (autarky.train.parallelize).

The experts' parameter names are the model's own (`...feed_forward.experts.w1`), and their placements are
DTensor ones, so a DCP checkpoint written under one EP degree loads under any other (or none): DCP reshards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard
from torch.func import functional_call

from autarky.model.moe import moe_layers


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times `scale` on the way back."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None  # type: ignore[attr-defined]


class ExpertParallelExperts(nn.Module):
    """A rank's share of an MoE layer's experts behind the dispatch/combine exchanges; called like the experts
    module it replaces (x sorted by global expert, counts per global expert) and holding parameters of the same
    names, as DTensors Shard(0) over the EP mesh."""

    def __init__(self, experts: nn.Module, ep_mesh: DeviceMesh) -> None:
        super().__init__()
        self.group, self.ep, rank = ep_mesh.get_group(), ep_mesh.size(), ep_mesh.get_local_rank()
        weights = dict(experts.named_parameters(recurse=False))
        n_experts = next(iter(weights.values())).shape[0]
        if n_experts % self.ep:
            raise ValueError(f"{n_experts} experts cannot be split over an expert-parallel group of {self.ep}")
        self.local = n_experts // self.ep
        span = slice(rank * self.local, (rank + 1) * self.local)
        for name, w in weights.items():
            local = w.detach()[span].clone()
            self.register_parameter(name, nn.Parameter(DTensor.from_local(local, ep_mesh, [Shard(0)], run_check=False),
                                                       requires_grad=w.requires_grad))  # fmt: skip
        # The computation stays the model's own module, run on the local shards (functional_call); it is not a
        # submodule (its parameters are these) and its own full-size copies are dropped.
        experts.to_empty(device="meta")
        self._compute = [experts]

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
        # Each expert's gradient arrives summed over the EP group's tokens; data parallelism averages over the
        # other ranks (FSDP2 over the expert mesh's "edp" dim), so 1/ep makes it the mean over all ranks, as
        # every other weight's gradient is.
        local = {name: _ScaleGrad.apply(_local(w), 1.0 / self.ep) for name, w in self.named_parameters()}
        out = functional_call(self._compute[0], local, (received[order], recv_by_rank.sum(0)))
        out = out[torch.argsort(order)]  # back to arrival order
        return dist_fn.all_to_all_single(x.new_empty(x.shape), out, send_splits, recv_splits, group=self.group)


def _local(w: torch.Tensor) -> torch.Tensor:
    return w.to_local() if isinstance(w, DTensor) else w


def expert_parallel_degree(model: nn.Module) -> int:
    """How many ranks split the model's experts (1: each rank has all of them)."""
    return max((m.ep for m in model.modules() if isinstance(m, ExpertParallelExperts)), default=1)


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh) -> nn.Module:
    """Shard every MoE layer's routed experts over the 1-D `ep_mesh`, in place; returns the model."""
    if ep_mesh.size() == 1:
        return model
    for layer in moe_layers(model).values():
        layer.experts = ExpertParallelExperts(layer.experts, ep_mesh)  # type: ignore[assignment]
    return model
