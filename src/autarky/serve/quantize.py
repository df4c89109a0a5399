"""int8 weight-only quantization: per-output-channel symmetric scales, activations stay in float.

CPU decode is bound by reading weights; int8 reads a quarter of the fp32 bytes. The matmul is torch's
`_weight_int8pack_mm` (the kernel behind torchao's int8 weight-only path); where it is missing we dequantize
on the fly, which is slower but still correct.
"""

from __future__ import annotations

import torch
from torch import nn


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # (out,)
        q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.device.type == "cpu":
            out = torch._weight_int8pack_mm(flat.contiguous(), self.weight_int8, self.scales.to(flat.dtype))
        else:
            out = flat @ (self.weight_int8.to(flat.dtype) * self.scales.to(flat.dtype)[:, None]).T
        return out.reshape(*shape[:-1], self.out_features)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear in place (the embedding lookup stays in float; a tied output gets its own copy)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return model
