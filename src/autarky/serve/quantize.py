"""int8 weight-only quantization: per-output-channel symmetric scales, a quarter of the fp32 bytes.

CPU decode is bound by reading weights from memory. Decode steps of a few rows go through a compiled kernel that
converts each weight to float inside its loop (autarky.serve.decode_kernels). More rows convert the int8 weights
piece by piece into a small reused buffer and multiply with oneDNN: DRAM delivers 1 byte per weight and the float
copy stays in cache. (A fresh full-size float copy per call is slower than fp32 weights: big allocations
page-fault.) Scales apply to the output (one per channel); activations stay in float.
Rejected, with measurements here: torch's `_weight_int8pack_mm` (7-20x slower than fp32 with fp32 activations;
with bf16 activations on avx512_bf16 no faster than `--quantize bf16`, see autarky.serve.packed, which is more
accurate) and fbgemm's dynamic int8 linear (fast, but per-tensor 7-bit activations put SmolLM2's logits 30% off).
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from autarky.serve.decode_kernels import KernelSwitch, decode_rows, matvec_int8
from autarky.serve.packed import packed_linear, replace_linears

PIECE_ELEMENTS = 1 << 20  # weights converted at a time: 4 MB of fp32, cache-resident (measured best here)
_scratch = threading.local()  # one buffer per engine thread


def _buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (dtype, device)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


class Int8Linear(KernelSwitch, nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # (out,)
        q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        # Biases (Qwen2's q/k/v) stay in the model's dtype: N numbers, not worth quantizing.
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.rows_per_piece = max(1, min(self.out_features, PIECE_ELEMENTS // self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._scaled_product(x)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def _scaled_product(self, x: torch.Tensor) -> torch.Tensor:
        if self.decode_kernels and decode_rows(x):
            return matvec_int8(x, self.weight_int8, self.scales)
        rows, n_in = self.rows_per_piece, self.in_features
        if x.device.type != "cpu":  # accelerators have bandwidth to spare: one conversion, one matmul
            return nn.functional.linear(x, self.weight_int8.to(x.dtype)) * self.scales.to(x.dtype)
        scratch = _buffer(rows * n_in, x.dtype, x.device)
        pieces = []
        for start in range(0, self.out_features, rows):
            n = min(rows, self.out_features - start)
            weight = scratch[: n * n_in].view(n, n_in)
            weight.copy_(self.weight_int8[start : start + n])
            pieces.append(packed_linear(x, weight))
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        return out * self.scales.to(x.dtype)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear in place (a tied output projection gets its own int8 copy)."""
    return replace_linears(model, Int8Linear)
