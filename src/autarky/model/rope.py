"""Rotary position embeddings (RoPE) in Hugging Face's rotate-half layout, with Llama 3.1's frequency scaling.

Only the tables differ between families: Llama 3.x (`rope_type = "llama3"`) divides the low frequencies by
`factor` and blends the middle band, so the model reaches long contexts without retraining the high
frequencies. The formula is the one of Meta's reference code and transformers' `_compute_llama3_parameters`.
"""

from __future__ import annotations

import math

import torch

from autarky.model.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """One rotation frequency per pair of channels: (E/2,) in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (E/2,)
    if scaling is None:
        return inv_freq
    old_context = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    # Wavelengths longer than the original context are stretched by `factor`; shorter than context/high are
    # kept; the band between is a linear blend of the two.
    scaled = torch.where(wavelen > old_context / scaling.low_freq_factor, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= old_context / scaling.high_freq_factor) & (wavelen <= old_context / scaling.low_freq_factor)
    return torch.where(medium, blended, scaled)


def rope_tables(head_dim: int, max_seq_len: int, theta: float,
                scaling: RopeScaling | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """cos and sin, each (max_seq_len, E), in the rotate-half layout used by Hugging Face."""
    inv_freq = inverse_frequencies(head_dim, theta, scaling)  # (E/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (max_T, E/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_T, E)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, E); cos/sin (B, T, E) for each token's own position."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos.unsqueeze(2) + rotated * sin.unsqueeze(2)).to(x.dtype)
