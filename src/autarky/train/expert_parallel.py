"""Expert parallelism, applied from outside the model: each rank of an EP group keeps E/ep of every MoE layer's
routed experts (the `[E, H, D]` weights as DTensors sharded on dim 0, torchtitan's Shard(0)) and tokens travel to
the rank that holds their expert and back in two `all_to_all_single` exchanges per layer: the counts, then the
tokens (the autograd form, so gradients travel back the same way). Router, shared experts and the rest stay with
FSDP2 over all data-parallel ranks (autarky.train.parallelize).

With tensor parallelism too, the experts themselves are not tensor-parallel (torchtitan's ETP=1): the ranks of a tp
group hold the same tokens and route them alike (the router is replicated), so each takes its own 1/tp of the
routed (token, expert) rows, sends only those to the experts, and the tp group all-gathers the outputs back. The ep
groups are any `ep` adjacent ranks: whether one spans several tp groups or sits inside one, every routed row of
every data-parallel rank is computed exactly once.

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


class _TPSpan:
    """This tp rank's contiguous share [lo, hi) of `total` rows (ceil-sized chunks, the last ones shorter)."""

    def __init__(self, total: int, group: dist.ProcessGroup, size: int, rank: int) -> None:
        self.total, self.group, self.size = total, group, size
        self.chunk = -(-total // size)
        self.lo, self.hi = min(rank * self.chunk, total), min((rank + 1) * self.chunk, total)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in rank order: (total, ...)."""
        padded = rows.new_zeros(self.chunk, *rows.shape[1:])
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat(parts)[: self.total]

    def counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Per-expert counts of this span's rows, given the counts of all rows (sorted by expert)."""
        end = torch.cumsum(counts, 0)
        return (end.clamp(max=self.hi) - (end - counts).clamp(min=self.lo)).clamp(min=0)


class _RowsOfThisTPRank(torch.autograd.Function):
    """x[lo:hi] of a tensor replicated over the tp group; backward all-gathers the other ranks' row gradients, so
    the replicated input gets its full gradient on every rank (Megatron's scatter to sequence parallel)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, span: _TPSpan) -> torch.Tensor:
        ctx.span = span  # type: ignore[attr-defined]
        return x[span.lo:span.hi]

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.span.gather(grad.contiguous()), None  # type: ignore[attr-defined]


class _GatherTPRows(torch.autograd.Function):
    """The tp group's row chunks, concatenated on every rank; backward keeps this rank's rows of the gradient,
    which is the same on every rank of the group (what follows is replicated), so nothing is summed."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, rows: torch.Tensor, span: _TPSpan) -> torch.Tensor:
        ctx.span = span  # type: ignore[attr-defined]
        return span.gather(rows)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        span = ctx.span  # type: ignore[attr-defined]
        return grad[span.lo:span.hi], None


class ExpertParallelExperts(nn.Module):
    """A rank's share of an MoE layer's experts behind the dispatch/combine exchanges; called like the experts
    module it replaces (x sorted by global expert, counts per global expert) and holding parameters of the same
    names, as DTensors Shard(0) over the EP mesh. `tp_mesh` (size > 1): the tp group whose ranks split the rows."""

    def __init__(self, experts: nn.Module, ep_mesh: DeviceMesh, tp_mesh: DeviceMesh | None = None) -> None:
        super().__init__()
        self.group, self.ep, rank = ep_mesh.get_group(), ep_mesh.size(), ep_mesh.get_local_rank()
        self.tp = 1 if tp_mesh is None else tp_mesh.size()
        self.tp_group = None if tp_mesh is None else tp_mesh.get_group()
        self.tp_rank = 0 if tp_mesh is None else tp_mesh.get_local_rank()
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
        if self.tp == 1:
            return self._exchange(x, counts)
        span = _TPSpan(x.shape[0], self.tp_group, self.tp, self.tp_rank)  # type: ignore[arg-type]
        out = self._exchange(_RowsOfThisTPRank.apply(x, span), span.counts(counts))
        return _GatherTPRows.apply(out, span)

    def _exchange(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
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
        # Each expert's gradient arrives summed over the rows the EP group's ranks sent (each data-parallel rank's
        # rows once over its tp group); FSDP2 averages over the expert mesh's "edp" dim (world / ep ranks), so
        # tp/ep makes it the mean over the world / tp data-parallel ranks, as every other weight's gradient is.
        scale = self.tp / self.ep
        local = {name: _ScaleGrad.apply(_local(w), scale) for name, w in self.named_parameters()}
        out = functional_call(self._compute[0], local, (received[order], recv_by_rank.sum(0)))
        out = out[torch.argsort(order)]  # back to arrival order
        return dist_fn.all_to_all_single(x.new_empty(x.shape), out, send_splits, recv_splits, group=self.group)


def _local(w: torch.Tensor) -> torch.Tensor:
    return w.to_local() if isinstance(w, DTensor) else w


def expert_parallel_degree(model: nn.Module) -> int:
    """How many ranks split the model's experts (1: each rank has all of them)."""
    return max((m.ep for m in model.modules() if isinstance(m, ExpertParallelExperts)), default=1)


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh, tp_mesh: DeviceMesh | None = None) -> nn.Module:
    """Shard every MoE layer's routed experts over the 1-D `ep_mesh`, in place; returns the model. With a
    `tp_mesh` of size > 1 the ranks of each tp group split the routed rows between them."""
    if ep_mesh.size() == 1:
        return model
    tp_mesh = tp_mesh if tp_mesh is not None and tp_mesh.size() > 1 else None
    for layer in moe_layers(model).values():
        layer.experts = ExpertParallelExperts(layer.experts, ep_mesh, tp_mesh)  # type: ignore[assignment]
    return model
