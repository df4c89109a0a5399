"""Presets from a laptop-sized model to the published Llama 3 shapes, plus the open families' published models
(Llama 3.x, Mistral, Qwen2.5, Qwen3), all one architecture, and mixtures of experts from a CPU-sized one to the
published frontier shapes (for planning; `autarky model info` gives their exact total and active parameters)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from autarky.errors import UserError
from autarky.model.config import ModelConfig, RopeScaling

if TYPE_CHECKING:
    from autarky.model.llama import Llama

# rope_scaling of Llama 3.1 (factor 8) and Llama 3.2 (factor 32), from their config.json.
_LLAMA31_ROPE = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=8192)
_LLAMA32_ROPE = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=8192)

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
    # The open families as published: the config.json of each model on the Hugging Face hub
    # (meta-llama/Llama-3.2-1B, meta-llama/Llama-3.1-8B, mistralai/Mistral-7B-v0.3, Qwen/Qwen2.5-0.5B,
    # Qwen/Qwen2.5-7B, Qwen/Qwen3-0.6B, Qwen/Qwen3-8B). Parameter totals are checked against transformers
    # building each model in tests/model/test_sizes.py (e.g. Qwen2.5-0.5B: 494,032,768).
    "llama3.2-1b": ModelConfig(vocab_size=128_256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
                               max_seq_len=131_072, tie_embeddings=True, rope_scaling=_LLAMA32_ROPE),
    "llama3.1-8b": ModelConfig(vocab_size=128_256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                               ffn_dim=14_336, max_seq_len=131_072, rope_scaling=_LLAMA31_ROPE),
    "mistral-7b": ModelConfig(vocab_size=32_768, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14_336,
                              max_seq_len=32_768, rope_theta=1_000_000.0, family="mistral"),
    "qwen2.5-0.5b": ModelConfig(vocab_size=151_936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_dim=4864,
                                max_seq_len=32_768, rope_theta=1_000_000.0, norm_eps=1e-6, tie_embeddings=True,
                                qkv_bias=True, family="qwen2"),
    "qwen2.5-7b": ModelConfig(vocab_size=152_064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, ffn_dim=18_944,
                              max_seq_len=131_072, rope_theta=1_000_000.0, norm_eps=1e-6, qkv_bias=True,
                              family="qwen2"),
    "qwen3-0.6b": ModelConfig(vocab_size=151_936, dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, ffn_dim=3072,
                              max_seq_len=40_960, rope_theta=1_000_000.0, norm_eps=1e-6, tie_embeddings=True,
                              head_dim=128, qk_norm=True, family="qwen3"),
    "qwen3-8b": ModelConfig(vocab_size=151_936, dim=4096, n_layers=36, n_heads=32, n_kv_heads=8, ffn_dim=12_288,
                            max_seq_len=40_960, rope_theta=1_000_000.0, norm_eps=1e-6, head_dim=128, qk_norm=True,
                            family="qwen3"),
    # Mixtures of experts. moe-nano is torchtitan's DeepSeek-V3 debugmodel in our architecture: 8 routed experts,
    # top 3, plus 2 shared, the first layer dense; ~12M parameters (~7M active), trains on 2 CPU cores. Its router
    # is DeepSeek-V3's (sigmoid scores, chosen ones renormalised, the balancing bias), which transformers'
    # GLM-4.5 MoE class expresses exactly, so a trained moe-nano exports with its bias.
    "moe-nano": ModelConfig(vocab_size=4096, dim=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_dim=1024,
                            max_seq_len=256, rope_theta=10_000.0, tie_embeddings=True, n_experts=8,
                            n_active_experts=3, n_shared_experts=2, moe_ffn_dim=256, first_k_dense=1,
                            score_func="sigmoid", route_norm=True),
    # Qwen/Qwen3-30B-A3B and Qwen/Qwen3-235B-A22B as published (config.json): 128 experts, top 8 renormalised.
    "qwen3-30b-a3b": ModelConfig(vocab_size=151_936, dim=2048, n_layers=48, n_heads=32, n_kv_heads=4, ffn_dim=6144,
                                 max_seq_len=40_960, rope_theta=1_000_000.0, norm_eps=1e-6, head_dim=128,
                                 qk_norm=True, family="qwen3_moe", n_experts=128, n_active_experts=8,
                                 moe_ffn_dim=768, route_norm=True),
    "qwen3-235b-a22b": ModelConfig(vocab_size=151_936, dim=4096, n_layers=94, n_heads=64, n_kv_heads=4,
                                   ffn_dim=12_288, max_seq_len=40_960, rope_theta=1_000_000.0, norm_eps=1e-6,
                                   head_dim=128, qk_norm=True, family="qwen3_moe", n_experts=128,
                                   n_active_experts=8, moe_ffn_dim=1536, route_norm=True),
    # DeepSeek-V3's shape (deepseek-ai/DeepSeek-V3 config.json: 61 layers, the first 3 dense, 256 routed experts
    # top 8 by sigmoid score with route scale 2.5, 1 shared) with OUR attention in place of MLA: 128 query heads
    # of 64 and 64 key/value heads give 176M attention parameters a layer against MLA's 187M, so the totals are
    # close (670.4B / 36.9B active, published 671B / 37B without the multi-token-prediction module) while the KV
    # cache is not MLA's compressed one. For planning compute and weight memory, not for KV-cache sizing.
    "deepseek-v3-like": ModelConfig(vocab_size=129_280, dim=7168, n_layers=61, n_heads=128, n_kv_heads=64,
                                    head_dim=64, ffn_dim=18_432, max_seq_len=163_840, rope_theta=10_000.0,
                                    norm_eps=1e-6, n_experts=256, n_active_experts=8, n_shared_experts=1,
                                    moe_ffn_dim=2048, first_k_dense=3, score_func="sigmoid", route_norm=True,
                                    route_scale=2.5),
}


def preset(name: str, **overrides: object) -> ModelConfig:
    """The named preset's config, with optional field overrides (e.g. vocab_size, max_seq_len)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    if cfg.head_dim == cfg.dim // cfg.n_heads and "head_dim" not in overrides:
        overrides = {**overrides, "head_dim": 0}  # derived, so it follows an overridden dim or n_heads
    return replace(cfg, **overrides) if overrides else cfg


def build_on_meta(cfg: ModelConfig) -> Llama:
    """The model with no storage: for counting parameters and planning layouts of any size."""
    import torch  # here, so that the presets (read by configs and the planner) stay torch-free

    from autarky.model.llama import Llama

    with torch.device("meta"):
        return Llama(cfg)
