"""bf16 matmuls on CPU through oneDNN with weights reordered once at load time (`--quantize bf16`).

Batch-1 decode on CPU is bound by reading weights from memory, so halving their bytes is what speeds it up.
Plain `F.linear` on bf16 tensors re-lays out the weight on every call and ends up barely faster than fp32;
oneDNN's prepacked weight (`torch.ops.mkldnn._reorder_linear_weight`, the path inductor's CPU backend uses) runs
the GEMV on avx512_bf16 at memory speed: about half the fp32 time for SmolLM2's layers and output projection
(measured numbers in bench/serve_decode.py). Only the matmul inputs are rounded to bf16; the residual stream,
norms, attention, KV cache and logits keep the model's dtype, so an fp32 model keeps most of its precision.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("autarky.serve")
M = TypeVar("M", bound=nn.Module)


def bf16_packing_supported() -> bool:
    """oneDNN with native bf16 (avx512_bf16 / AMX); elsewhere bf16 GEMV is emulated and slower than fp32."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def prepack(weight: torch.Tensor) -> torch.Tensor:
    """The weight (N, K) reordered once into oneDNN's blocked layout for `packed_linear` (a copy)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def packed_blocks(packed: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """The memory of `packed` (`weight` (N, K) after `prepack`) as a plain strided tensor (N/b, K, b), when oneDNN
    laid it out in blocks of b output channels (fp32 on AVX-512: b = 64): weight row n is [n // b, :, n % b], rows
    past N are padding. Checked against `weight`, so any other layout (bf16's interleaved pairs) gives None. The
    view keeps `packed` alive, so a layer can drop its plain weight and still read the weights with its own
    kernels: one copy instead of two."""
    if not (hasattr(torch.ops.mkldnn, "data_ptr") and hasattr(torch.ops.mkldnn, "_nbytes")):
        return None
    (n, k), nbytes = weight.shape, torch.ops.mkldnn._nbytes(packed)
    for block in (64, 32, 16, 8):
        blocks = -(-n // block)
        if blocks * block * k * weight.element_size() != nbytes:
            continue
        # A ctypes array over oneDNN's buffer, carrying the packed tensor so the buffer lives as long as a view.
        memory = type("PackedWeightMemory", (ctypes.c_byte * nbytes,), {}).from_address(
            torch.ops.mkldnn.data_ptr(packed))
        memory.owner = packed
        view = torch.frombuffer(memory, dtype=weight.dtype).view(blocks, k, block)
        if torch.equal(view.transpose(1, 2).reshape(-1, k)[:n], weight):
            return view
    return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight.T through oneDNN, weight in x's dtype: prepacked by `prepack`, or a plain (N, K)
    tensor (oneDNN then reorders it on the fly, still faster than MKL here)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


class PackedBF16Linear(nn.Module):
    """An nn.Linear whose weight lives in bf16, prepacked for oneDNN on CPU (plain bf16 elsewhere); a bias, if
    any, is added in the model's dtype after the product."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        weight = linear.weight.detach().to(torch.bfloat16)
        self.packed = weight.device.type == "cpu" and bf16_packing_supported()
        # A plain attribute, not a buffer: an mkldnn-layout tensor cannot be moved, saved or cloned like one.
        self.weight_bf16 = prepack(weight) if self.packed else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        if self.packed:
            out = packed_linear(xb, self.weight_bf16)
        else:
            out = F.linear(xb, self.weight_bf16)
        return out.to(x.dtype) if self.bias is None else out.to(x.dtype) + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed={self.packed}"


def replace_modules(model: nn.Module, kind: type[M], make: Callable[[M], nn.Module]) -> nn.Module:
    """Swap every submodule of exactly type `kind` in place for make(submodule): serving changes how the model
    computes from outside it (subclasses are left alone, so a second swap does not wrap a swapped module)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, name, make(child))
    return model


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Swap every nn.Linear of the model in place for make(linear)."""
    return replace_modules(model, nn.Linear, make)


def pack_bf16(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear in place (a tied output projection gets its own bf16 copy; embeddings stay)."""
    on_cpu = any(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and not bf16_packing_supported():
        log.warning("this CPU has no native bf16 matmul (avx512_bf16/AMX): --quantize bf16 will be slow; "
                    "try --quantize int8")
    return replace_linears(model, PackedBF16Linear)
