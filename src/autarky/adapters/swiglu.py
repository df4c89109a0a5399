"""The SwiGLU feed-forward's down projection with its gate recomputed in backward: half the MLP's activations.

A plain `w2(silu(w1(x)) * w3(x))` keeps four (tokens, hidden) tensors per block for backward: the gate's input
e = w1(x), silu(e), the up projection g = w3(x), and their product h (the input w2's weight or LoRA A needs). They
are most of a fine-tuning step's activation memory (hidden is ~2.7× dim). `SwiGLUDown` keeps only e and g and
recomputes silu(e) and h in backward from them: a few elementwise passes over tensors already being read, instead
of two more (tokens, hidden) tensors held across the whole step. No matmul is recomputed, so unlike activation
checkpointing it costs (almost) no time. It handles w2 as a frozen or trained weight (with its bias) and as a
LoraLinear (fp or int8 base, the adapters trained), and gives the same values and gradients as the plain form
(tests/adapters/test_swiglu.py).

`fuse_swiglu(model)` sets it on every dense FeedForward of a model from outside (the instance's forward, as
activation checkpointing does: parameter names, checkpoints and adapters are unchanged). LoRA dropout on w2 needs
the dropped input, which this does not keep, so such a block keeps the plain form.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autarky.adapters.lora import LoraLinear


class SwiGLUDown(torch.autograd.Function):
    """y = h·W2ᵀ + b + ((h·Aᵀ)·Bᵀ)·s with h = silu(e)·g, keeping e, g and the (tokens, r) h·Aᵀ for backward.
    A and B are None without an adapter. Computes in e's dtype (autocast's, when on)."""

    @staticmethod
    def forward(ctx: Any, e: torch.Tensor, g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor | None, lora_b: torch.Tensor | None, scaling: float) -> torch.Tensor:  # fmt: skip
        dt = e.dtype
        h = F.silu(e) * g  # (N, H): freed when forward returns
        y = F.linear(h, weight.to(dt), None if bias is None else bias.to(dt))  # (N, D)
        u = None
        if lora_a is not None and lora_b is not None:
            u = F.linear(h, lora_a.to(dt))  # (N, r)
            y = y + F.linear(u, lora_b.to(dt)) * scaling
        ctx.scaling = scaling
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(e, g, weight, lora_a, lora_b, u)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        e, g, weight, lora_a, lora_b, u = ctx.saved_tensors
        dt, s = e.dtype, ctx.scaling
        dy = dy.to(dt)
        sig = torch.sigmoid(e)
        silu = e * sig
        h = silu * g  # recomputed: what forward did not keep
        dh = dy @ weight.to(dt)  # (N, H)
        d_weight = d_bias = d_a = d_b = None
        flat_dy = dy.reshape(-1, dy.shape[-1])
        if ctx.needs_input_grad[2]:
            d_weight = (flat_dy.t() @ h.reshape(-1, h.shape[-1])).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            d_bias = flat_dy.sum(0).to(ctx.bias_dtype)
        if lora_a is not None and lora_b is not None:
            flat_u = u.reshape(-1, u.shape[-1])
            d_b = ((flat_dy.t() @ flat_u) * s).to(lora_b.dtype)  # (D, r)
            du = (dy @ lora_b.to(dt)) * s  # (N, r)
            d_a = (du.reshape(-1, du.shape[-1]).t() @ h.reshape(-1, h.shape[-1])).to(lora_a.dtype)  # (r, H)
            dh = dh + du @ lora_a.to(dt)
        dg = dh * silu
        de = dh * g * (sig * (1 + e * (1 - sig)))  # silu'(e) = σ(e)(1 + e(1 − σ(e)))
        return de, dg, d_weight, d_bias, d_a, d_b, None


def swiglu_down(w2: nn.Module, e: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w2(silu(e)·g) through SwiGLUDown, for w2 an nn.Linear or a LoraLinear without dropout."""
    if isinstance(w2, LoraLinear):
        weight = w2.base_weight(e.dtype) if w2.quantized else w2.weight
        return SwiGLUDown.apply(e, g, weight, w2.bias, w2.lora_A, w2.lora_B, w2.scaling)
    return SwiGLUDown.apply(e, g, w2.weight, w2.bias, None, None, 1.0)


def _fusable(w2: nn.Module) -> bool:
    return type(w2) is nn.Linear or (isinstance(w2, LoraLinear) and w2.dropout == 0.0)


def fuse_swiglu(model: nn.Module) -> int:
    """Give every dense SwiGLU feed-forward (w1, w3 gate/up, w2 down) of `model` the recomputing down projection,
    in place; returns how many. A feed-forward whose w2 takes LoRA dropout keeps its own forward."""
    from autarky.model.moe import FeedForward

    fused = 0
    for module in model.modules():
        if type(module) is FeedForward and _fusable(module.w2):
            ff = module

            def forward(x: torch.Tensor, _ff: FeedForward = ff) -> torch.Tensor:
                if not _fusable(_ff.w2):  # merged or swapped since: the plain form
                    return _ff.w2(F.silu(_ff.w1(x)) * _ff.w3(x))
                return swiglu_down(_ff.w2, _ff.w1(x), _ff.w3(x))

            ff.forward = forward  # type: ignore[method-assign]
            fused += 1
    return fused
