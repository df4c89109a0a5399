"""Process groups and parallelism, applied from outside the model: TP (DTensor), expert parallelism, activation
checkpointing, compile, then FSDP2 (torchtitan's order).

Launch: `autarky train ...` is one process; `torchrun --nproc_per_node=N -m autarky train ...` is N. The mesh is
(dp, tp): tensor parallel inside each tp group (Colwise q/k/v/w1/w3, Rowwise wo/w2, as in the PyTorch TP
tutorial and torchtitan), FSDP2 `fully_shard` over the dp dimension. With `--ep N` a second mesh
(edp, ep) = (world / N, N) holds the routed experts: Shard(0) over ep (autarky.train.expert_parallel), FSDP2 over
edp; everything else is FSDP2 over dp, and the batches are split over dp as plain data parallelism. With both, a
mixture-of-experts block is tensor-parallel in its attention and shared experts, its router is replicated, and its
routed experts are not tensor-parallel (torchtitan's ETP=1): each tp rank sends its share of the routed rows to the
ep group (the ep ranks are carved out of dp × tp), and the tp group gathers the outputs back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from autarky.errors import UserError
from autarky.model.config import ModelConfig
from autarky.model.llama import Llama

ActivationCheckpointing = Literal["none", "full", "selective"]


@dataclass(frozen=True)
class Topology:
    """Where this process sits. world == 1 means no process group at all."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    tp: int
    device: torch.device
    ep: int = 1  # expert-parallel degree: each group of ep adjacent ranks splits every MoE layer's experts

    @property
    def dp_size(self) -> int:
        return self.world // self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp  # mesh (dp, tp) is row-major: tp ranks are adjacent

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def topology_from_env(tp: int, device: str, ep: int = 1) -> Topology:
    """Read torchrun's environment (or assume one process) and validate the tp and ep degrees; creates nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if world % tp:
        raise UserError(f"--tp {tp} does not divide the world size {world}; use a divisor of the process count")
    if world % ep:
        raise UserError(f"--ep {ep} does not divide the world size {world}; run a multiple of {ep} processes "
                        "(torchrun --nproc_per_node) or use a divisor of the process count")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Topology(rank=rank, world=world, local_rank=local_rank, local_world=local_world, tp=tp, device=dev,
                    ep=ep)


def check_model_fits_tp(cfg: ModelConfig, tp: int, ep: int = 1) -> None:
    widths = [("n_heads", cfg.n_heads), ("n_kv_heads", cfg.n_kv_heads), ("ffn_dim", cfg.ffn_dim)]
    if cfg.n_experts and tp > 1:
        if ep == 1:
            raise UserError(f"--tp {tp} with a mixture-of-experts model needs expert parallelism too: the routed "
                            f"experts are split by --ep, not by tensor parallelism (e.g. --tp {tp} --ep {tp})")
        widths.append(("shared experts' width", cfg.moe_ffn_dim * cfg.n_shared_experts))
    for name, value in widths:
        if value % tp:
            raise UserError(f"--tp {tp} does not divide the model's {name} ({value}); pick a tp degree that does")


def check_model_fits_ep(cfg: ModelConfig, preset: str, ep: int) -> None:
    if ep == 1:
        return
    if not cfg.n_experts:
        raise UserError(f"--ep {ep} needs a mixture-of-experts model; {preset} has no experts (try moe-nano)")
    if cfg.n_experts % ep:
        raise UserError(f"--ep {ep} does not divide the model's {cfg.n_experts} experts; pick an ep degree that does")


def init_process_group(topo: Topology) -> DeviceMesh | None:
    """Join the job's process group (NCCL on CUDA, gloo on CPU) and build the (dp, tp) mesh."""
    if topo.world == 1:
        return None
    if topo.device.type == "cuda":
        torch.cuda.set_device(topo.device)
    backend = "nccl" if topo.device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    return init_device_mesh(topo.device.type, (topo.dp_size, topo.tp), mesh_dim_names=("dp", "tp"))


def init_expert_mesh(topo: Topology) -> DeviceMesh | None:
    """The (edp, ep) mesh of the routed experts (ep ranks adjacent); None without expert parallelism."""
    if topo.ep == 1:
        return None
    return init_device_mesh(topo.device.type, (topo.world // topo.ep, topo.ep), mesh_dim_names=("edp", "ep"))


def dp_group(mesh: DeviceMesh | None) -> dist.ProcessGroup | None:
    return None if mesh is None else mesh["dp"].get_group()


def parallelize(model: Llama, mesh: DeviceMesh | None, *, compile: bool, bf16: bool,
                activation_checkpointing: ActivationCheckpointing = "none",
                expert_mesh: DeviceMesh | None = None) -> nn.Module:  # fmt: skip
    """Apply TP, EP, activation checkpointing, compile and FSDP2 in torchtitan's order, in place; returns the
    model. `expert_mesh` (from init_expert_mesh) shards the routed experts."""
    tp_mesh = mesh["tp"] if mesh is not None and mesh["tp"].size() > 1 else None
    if tp_mesh is not None:
        if model.config.n_experts and expert_mesh is None:  # e.g. fine-tuning, which has no --ep
            raise UserError("tensor parallel of a mixture-of-experts model needs expert parallelism too, which only "
                            "`autarky train --ep` sets up; use --tp 1")
        _apply_tensor_parallel(model, tp_mesh)
    if expert_mesh is not None:
        from autarky.train.expert_parallel import apply_expert_parallel

        apply_expert_parallel(model, expert_mesh["ep"], tp_mesh)
    apply_activation_checkpointing(model, activation_checkpointing)
    if compile:
        for block in model.layers.values():
            block.compile()  # per block, as torchtitan does: a repeated graph compiles once
    # The experts' edp dim can exceed dp: with ep smaller than tp and dp 1, edp ranks hold the same experts but
    # computed different rows, so their gradients still need averaging.
    edp = 1 if expert_mesh is None else expert_mesh["edp"].size()
    if mesh is not None and (mesh["dp"].size() > 1 or edp > 1):
        _apply_fsdp(model, mesh["dp"], bf16=bf16, expert_mesh=expert_mesh)
    return model


def apply_activation_checkpointing(model: Llama, mode: ActivationCheckpointing) -> None:
    """Recompute each block's activations in backward instead of keeping them: every block ("full") or every
    other one ("selective", torchtitan's layer-frequency 2), trading about one more forward for their memory.

    Non-reentrant torch.utils.checkpoint over the block's own forward, set on the instance: unlike torchtitan's
    checkpoint_wrapper no module is inserted, so parameter names (DCP checkpoints, LoRA adapters) are the same with
    AC on or off and a run resumes across the switch. The RNG state is replayed, so LoRA dropout recomputes the
    same mask; block.compile() and fully_shard, applied after, see an ordinary forward.
    """
    if mode == "none":
        return
    from torch.utils.checkpoint import checkpoint

    every = 1 if mode == "full" else 2
    for i, block in enumerate(model.layers.values()):
        if i % every == 0:
            forward = block.forward

            def checkpointed(*args: Any, _forward: Any = forward, **kwargs: Any) -> torch.Tensor:
                if not torch.is_grad_enabled():  # evaluation keeps nothing for backward anyway
                    return _forward(*args, **kwargs)
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            block.forward = checkpointed  # type: ignore[method-assign]


def _apply_tensor_parallel(model: Llama, tp_mesh: DeviceMesh) -> None:
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    from autarky.model.moe import MoE

    # Biases follow their weights: a colwise bias is sharded with the output features, a rowwise one replicated.
    qk_norm = model.config.qk_norm
    plan: dict[str, Any] = {
        "attention.wq": ColwiseParallel(use_local_output=not qk_norm),
        "attention.wk": ColwiseParallel(use_local_output=not qk_norm),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(),
    }
    if qk_norm:
        # Each rank normalises only its own heads, so a plain norm weight would get a different gradient on each
        # rank. As DTensors (queries/keys sharded on the head dim, weights replicated) their gradients are summed
        # over the tp group (torchtitan's Qwen3 plan).
        plan["attention.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        plan["attention.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    for block in model.layers.values():
        # A sparse block's router stays replicated (every tp rank routes alike) and its routed experts are left to
        # expert parallelism; its shared experts are a SwiGLU like the dense one.
        sparse = isinstance(block.feed_forward, MoE)
        swiglu = "feed_forward.shared" if sparse else "feed_forward"
        block_plan = dict(plan)
        if not sparse or hasattr(block.feed_forward, "shared"):
            block_plan |= {f"{swiglu}.w1": ColwiseParallel(), f"{swiglu}.w3": ColwiseParallel(),
                           f"{swiglu}.w2": RowwiseParallel()}  # fmt: skip
        parallelize_module(block, tp_mesh, block_plan)


def _apply_fsdp(model: Llama, dp_mesh: DeviceMesh, *, bf16: bool, expert_mesh: DeviceMesh | None = None) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from autarky.model.moe import moe_layers

    # bf16 compute with fp32 master weights and fp32 gradient reduction (Llama 3 §3.3.2 practice). With dp 1 only
    # the experts are sharded, and they compute in the precision the rest does (autocast, fp32 weights).
    sharded = dp_mesh.size() > 1
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 and sharded else None
    kwargs = {"mesh": dp_mesh, **({"mp_policy": mp} if mp else {})}
    if expert_mesh is not None:
        # Sharded experts (DTensors on the ep dim) are data-parallel over the edp dim only; nested, so each
        # block's own fully_shard below leaves them out.
        for layer in moe_layers(model).values():
            fully_shard(layer.experts, **{**kwargs, "mesh": expert_mesh["edp"]})
    if not sharded:
        return
    for block in model.layers.values():
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def all_reduce_mean(value: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Mean of a scalar over a group (identity without one)."""
    if group is None or dist.get_world_size(group) == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value / dist.get_world_size(group)


def any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """True if `flag` is set on any rank (so a signal seen by one rank stops all of them together)."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global L2 grad norm (and clip to max_norm if > 0) over plain tensors and DTensors on any meshes.

    torch's clip_grad_norm_ wants every grad on one mesh; with TP-only weights on the 2-D mesh and the rest
    sharded over dp only, we reduce each (mesh, placements) group separately and combine. The norm stays a
    tensor and the scale is applied unconditionally (×1 is exact), so on CUDA no step waits for the device.
    """
    from torch.distributed.tensor import DTensor

    groups: dict[object, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            g = p.grad
            key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else None
            groups.setdefault(key, []).append(g)
    squares = []
    for grads in groups.values():
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares.append(norm.float().square())
    if not squares:
        return torch.zeros(())
    total = torch.stack(squares).sum().sqrt()
    if max_norm > 0:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for grads in groups.values():
            torch._foreach_mul_(grads, coef.to(grads[0].dtype))
    return total
