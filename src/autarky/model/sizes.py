"""Presets from a laptop-sized model to the published Llama 3 shapes, all one architecture."""

from __future__ import annotations

from dataclasses import replace

import torch

from autarky.errors import UserError
from autarky.model.llama import Llama, ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Trains on 2 CPU cores in minutes: ~1.3M parameters with a 4,096-token vocabulary.
    "nano": ModelConfig(vocab_size=4096, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384,
                        max_seq_len=256, rope_theta=10_000.0, tie_embeddings=True),
    # ~16M parameters.
    "micro": ModelConfig(vocab_size=8192, dim=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dim=1024,
                         max_seq_len=512, rope_theta=10_000.0),
    # ~100M parameters, the size of GPT-2 small / SmolLM2-135M.
    "small": ModelConfig(vocab_size=32768, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048,
                         max_seq_len=1024, rope_theta=10_000.0, tie_embeddings=True),
    # Llama 3.2 1B shape (1.24B parameters, tied embeddings).
    "1b": ModelConfig(vocab_size=128_256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
                      max_seq_len=8192, tie_embeddings=True),
    # The published Llama 3 / 3.1 shapes (arXiv:2407.21783 Table 3).
    "8b": ModelConfig(vocab_size=128_256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14_336,
                      max_seq_len=8192),
    "70b": ModelConfig(vocab_size=128_256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28_672,
                       max_seq_len=8192),
    "405b": ModelConfig(vocab_size=128_256, dim=16_384, n_layers=126, n_heads=128, n_kv_heads=8,
                        ffn_dim=53_248, max_seq_len=8192),
}


def preset(name: str, **overrides: object) -> ModelConfig:
    """The named preset's config, with optional field overrides (e.g. vocab_size, max_seq_len)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    return replace(cfg, **overrides) if overrides else cfg


def build_on_meta(cfg: ModelConfig) -> Llama:
    """The model with no storage: for counting parameters and planning layouts of any size."""
    with torch.device("meta"):
        return Llama(cfg)
