"""The output head and its cross-entropy as one step over blocks of rows, so the (N, V) logits never exist at once.

A training step's largest tensors are often its logits and their gradient: N trained tokens × a 49k-152k
vocabulary in fp32, twice (on SmolLM2 with 2,048 trained tokens, 800 MB against a 540 MB model). Here the head
runs a block of rows at a time: the block's logits are turned in place into softmax − one-hot (the gradient of
the mean cross-entropy, up to 1/N), which is multiplied into the gradients of the hidden states and of the head's
weight at once, and the block is dropped. Backward only scales what forward kept: the (N, D) hidden-state gradient
(and the weight's, when it is trained). Same FLOPs as logits + loss + their backward; no recompute (Liger's
fused linear cross-entropy does the same). fp32 loss whatever the compute dtype; no ignore_index (callers pass
trained tokens only); no double backward.
"""

from __future__ import annotations

from typing import Any

import torch

# Bytes of logits one head block holds: a few cache-friendly passes per block, while each block's rows still
# amortise reading the (V, D) weight twice (on CPU 64 MiB = 341 rows of a 49k vocabulary).
HEAD_BLOCK_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}
_CACHE_BYTES = {"cpu": 1 << 20, "cuda": 1 << 30}  # fp32 work per pass over a block's rows: L2 on CPU


def cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """Per-row cross-entropy (fp32) of logits (r, V) against targets (r,); with `grad` (r, V), also writes
    softmax − one-hot into it (it may be `logits` itself: rows are read before they are overwritten). Done a
    cache-sized block of rows at a time in fp32, so each row is read from memory once whatever its dtype."""
    n, vocab = logits.shape
    losses = torch.empty(n, device=logits.device, dtype=torch.float32)
    rows = max(1, _CACHE_BYTES.get(logits.device.type, 1 << 30) // (4 * vocab))
    for start in range(0, n, rows):
        x = logits[start : start + rows].float()  # (b, V): a copy unless fp32
        t = targets[start : start + rows, None]  # (b, 1)
        target_logit = x.gather(1, t)
        peak = x.amax(dim=1, keepdim=True)
        if grad is None:
            losses[start : start + rows] = (peak + (x - peak).exp_().sum(1, keepdim=True).log() - target_logit)[:, 0]
            continue
        g = grad[start : start + rows]
        p = g if g.dtype == torch.float32 else torch.empty_like(x)  # fp32 gradient: work in the output
        torch.sub(x, peak, out=p).exp_()
        total = p.sum(dim=1, keepdim=True)
        losses[start : start + rows] = (peak + total.log() - target_logit)[:, 0]
        p.div_(total).scatter_add_(1, t, torch.full_like(t, -1, dtype=p.dtype))
        if p is not g:
            g.copy_(p)
    return losses


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (h @ weight.T) against targets, with both gradients produced in forward, a block of
    rows at a time (the module docstring). h (N, D), weight (V, D), targets (N,); matmuls in `dtype`."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        losses = _head_pass(h, weight, targets, dtype, grad_h, grad_w)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.n, ctx.weight_dtype = h.shape[0], weight.dtype
        return losses.mean()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_output / ctx.n
        if grad_h is not None:
            grad_h = grad_h.mul_(scale.to(grad_h.dtype))  # in place: each buffer is used exactly once
        if grad_w is not None:
            grad_w = grad_w.mul_(scale).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean fp32 cross-entropy of the head `weight` (V, D) over hidden states h (N, D) against targets (N,), in
    autocast's dtype when it is on. Without gradients wanted, only the per-block losses are computed."""
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(h, weight, targets, dtype)  # type: ignore[no-any-return]
    with torch.no_grad():
        return _head_pass(h, weight, targets, dtype, None, None).mean()


def _head_pass(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
               grad_h: torch.Tensor | None, grad_w: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """Per-row losses (N,), block by block; softmax − one-hot multiplied into grad_h (N, D) and added into
    grad_w (V, D, fp32) when given (unscaled: backward divides by N)."""
    n, vocab = h.shape[0], weight.shape[0]
    rows = max(1, HEAD_BLOCK_BYTES.get(h.device.type, 1 << 30) // (torch.finfo(dtype).bits // 8 * vocab))
    want_grad = grad_h is not None or grad_w is not None
    losses = torch.empty(n, device=h.device, dtype=torch.float32)
    w = weight.to(dtype)
    with torch.autocast(h.device.type, enabled=False):  # the caller chose the dtype
        for start in range(0, n, rows):
            x = h[start : start + rows].to(dtype)  # (r, D)
            logits = x @ w.T  # (r, V)
            t = targets[start : start + rows]
            losses[start : start + rows] = cross_entropy_rows(logits, t, logits if want_grad else None)
            if grad_h is not None:
                grad_h[start : start + rows] = logits @ w
            if grad_w is not None:
                if dtype == torch.float32:
                    grad_w.addmm_(logits.T, x)
                else:
                    grad_w += (logits.T @ x).float()
            del logits  # before the next block's logits are made: one block alive, not two
    return losses
