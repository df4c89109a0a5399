"""One optimizer step and the optimizer itself: shared by the loop and bench/train_throughput.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from autarky.model.head_loss import cross_entropy_rows
from autarky.model.moe import aux_loss
from autarky.train.config import OptimSection
from autarky.train.parallelize import clip_grad_norm

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs, targets: (b, T) each


class MicroBatch(NamedTuple):
    """One micro-step's rows. Pretraining windows are just (inputs, targets); fine-tuning rows add each example's
    own positions and segment ids (packed rows), the flat indices of the positions whose targets are trained
    (the rest are prompt or padding), and the weight that turns this micro-batch's mean loss into its share of
    the whole step's mean over trained tokens (micro-batches and ranks hold different numbers of them)."""

    inputs: torch.Tensor  # (b, T)
    targets: torch.Tensor  # (b, T)
    positions: torch.Tensor | None = None  # (b, T)
    segments: torch.Tensor | None = None  # (b, T)
    trained: torch.Tensor | None = None  # (n,) indices into the b·T flattened positions
    weight: float = 1.0
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (N, V) logits, (N,) targets → mean loss


def autocast_for(device: torch.device, bf16: bool) -> Callable[[], AbstractContextManager[Any]]:
    """bf16 autocast (fp32 master weights, fp32 loss) or nothing."""
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


class FusedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of given logits whose gradient, softmax − one-hot, is produced during the forward pass,
    a cache-sized block of rows at a time, in fp32 whatever the logits' dtype (autarky.model.head_loss).

    The usual log_softmax + nll_loss pair sweeps the (N, V) logits about six times (max, exp-sum, write
    log-probs; then a zero-filled (N, V) nll gradient and a log_softmax backward with another exp) and keeps
    the log-probs alive; here each block is read once from memory and the rest happens in cache. Same value
    and gradient as F.cross_entropy (tests/train/test_step.py). No ignore_index; no double backward.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (N, V), (N,)
        grad = torch.empty_like(logits)
        losses = cross_entropy_rows(logits, targets, grad)
        ctx.save_for_backward(grad)
        return losses.mean()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_output / grad.shape[0]), None  # in place: the buffer is used exactly once


def fp32_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


def training_loss(compile: bool) -> LossFn:
    """The loss the train step differentiates. Compiled, inductor folds the upcast, log-sum-exp and gradient
    into a couple of passes over the (N, V) logits (on an H100 the eager passes were ~12% of a 1b step);
    eager, FusedCrossEntropy, which batch_loss runs fused with the model's head (`fuses_with_head`)."""
    if compile:
        return torch.compile(fp32_cross_entropy)
    return FusedCrossEntropy.apply  # type: ignore[return-value]


def fuses_with_head(loss_fn: LossFn) -> bool:
    """Whether batch_loss hands this loss to the model's head instead of taking logits: FusedCrossEntropy is then
    computed with the head a block of rows at a time (Llama.forward's `targets`, autarky.model.head_loss), the
    same loss and gradients without ever holding the whole (N, V) logits or their gradient (on SmolLM2 with
    2,048 trained tokens: 800 MB). Compiled losses keep whole logits, which inductor fuses."""
    return loss_fn == FusedCrossEntropy.apply  # a classmethod: a new bound method per access, equal not identical


def batch_loss(model: nn.Module, batch: Batch | MicroBatch,
               autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
               loss_fn: LossFn = FusedCrossEntropy.apply) -> torch.Tensor:  # fmt: skip
    """The weighted mean cross-entropy (fp32) of one micro-batch over its trained positions (all, for windows)."""
    inputs, targets, positions, segments, trained, weight = MicroBatch(*batch)
    flat_targets = targets.flatten() if trained is None else targets.flatten()[trained]
    # The head (and the loss) only where a target is trained: prompts are often most tokens.
    if fuses_with_head(loss_fn):
        with autocast():
            loss = model(inputs, positions=positions, segments=segments, logits_where=trained, targets=flat_targets)
    else:
        with autocast():
            logits = model(inputs, positions=positions, segments=segments, logits_where=trained)
        flat_logits = logits if trained is not None else logits.flatten(0, 1)  # (N, V)
        if torch.is_grad_enabled() and flat_logits.requires_grad:
            loss = loss_fn(flat_logits, flat_targets)
        else:
            loss = fp32_cross_entropy(flat_logits, flat_targets)
    return loss if weight == 1.0 else loss * weight


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (on CPU too: 8x faster than foreach for nano); weight decay on matrices only.
    Params on different DTensor meshes (TP, FSDP-only, expert-parallel) go to separate groups: one fused call
    cannot mix meshes. So the groups depend on the layout; checkpoints key the optimizer state by parameter name."""
    from torch.distributed.tensor import DTensor

    groups: dict[tuple[bool, int], list[nn.Parameter]] = {}
    meshes: list[Any] = []
    for p in model.parameters():
        if not p.requires_grad:  # frozen (e.g. the base under LoRA): no state, no update
            continue
        mesh = p.device_mesh if isinstance(p, DTensor) else None
        if mesh not in meshes:
            meshes.append(mesh)
        groups.setdefault((p.ndim >= 2, meshes.index(mesh)), []).append(p)
    param_groups = [{"params": ps, "weight_decay": optim.weight_decay if decay else 0.0}
                    for (decay, _), ps in groups.items()]  # fmt: skip
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             fused=True)  # fmt: skip


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Batch | MicroBatch],
    *,
    grad_clip: float,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    loss_fn: LossFn = FusedCrossEntropy.apply,
    fsdp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate gradients over the micro-batches, clip, step; returns (mean loss, grad norm before clipping),
    both as tensors on the device: reading them is the caller's choice of when to wait for it."""
    accum = len(micro_batches)
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    for i, batch in enumerate(micro_batches):
        if fsdp and accum > 1:
            model.set_requires_gradient_sync(i == accum - 1)  # type: ignore[operator]  # reduce-scatter once
        loss = batch_loss(model, batch, autocast, loss_fn)
        balance = aux_loss(model)  # an MoE's auxiliary balance loss, when on: trained, not reported
        ((loss if balance is None else loss + balance) / accum).backward()
        loss_sum += loss.detach()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = clip_grad_norm(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / accum, grad_norm
