"""int8 weights for CPU decode: per-output-channel symmetric scales, a quarter of the fp32 bytes.

CPU decode is bound by reading weights, so int8 storage is the lever. The kernel matters as much as the format:
torch's weight-only `_weight_int8pack_mm` is 7-20x *slower* than fp32 on CPUs without AVX-512 (measured here on
an AVX2 EPYC), while fbgemm's dynamic int8 linear (int8 weights; each token's activations quantized on the fly
per tensor) runs ~4x faster than fp32 at batch 1. So on CPU we use fbgemm through `torch.ao`; elsewhere the
int8 weights are dequantized into the matmul (weight-only). Embeddings, norms and the KV cache stay in float.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def _int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # (out,)
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = _int8_per_channel(linear.weight)
        self.dtype = linear.weight.dtype
        self.fbgemm: nn.Module | None = None
        if linear.weight.device.type == "cpu" and torch.backends.quantized.engine in ("x86", "fbgemm"):
            with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
                warnings.simplefilter("ignore")
                packed = torch.ao.nn.quantized.dynamic.Linear(self.in_features, self.out_features, bias_=False,
                                                               dtype=torch.qint8)
                zero = torch.zeros(self.out_features, dtype=torch.long)
                packed.set_weight_bias(torch._make_per_channel_quantized_tensor(q, scales.double(), zero, 0), None)
            self.fbgemm = packed
        else:
            self.register_buffer("weight_int8", q)
            self.register_buffer("scales", scales.to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fbgemm is not None:
            return self.fbgemm(x.float()).to(x.dtype)
        weight = self.weight_int8.to(x.dtype) * self.scales.to(x.dtype)[:, None]
        return nn.functional.linear(x, weight)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear in place (a tied output projection gets its own int8 copy)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return model
