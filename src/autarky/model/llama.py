"""The Llama architecture in plain PyTorch: RMSNorm, RoPE, SwiGLU, grouped-query attention.

The open families built on it are configuration of this one model: Llama 3.x (scaled RoPE), Mistral (a sliding
attention window), Qwen2/2.5 (q/k/v biases), Qwen3 (RMSNorm on each query/key head, a head width of its own).
That configuration, `ModelConfig`, lives in autarky.model.config, which needs no torch.

One file, no parallelism, no logging: FSDP2, tensor parallel, compile and checkpointing are applied from
outside (autarky.train.parallelize). Weight names and the rotary convention (rotate-half) match Hugging Face's
LlamaForCausalLM, so export is a rename and logits agree to float precision.

Shapes use B = batch, T = new tokens, S = tokens attended to (cache + new), D = dim, H = query heads,
K = key/value heads, E = head dim, V = vocabulary.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from autarky.model.config import ModelConfig
from autarky.model.head_loss import linear_cross_entropy
from autarky.model.moe import FeedForward, MoE
from autarky.model.rope import apply_rope, rope_tables


class KVCache(Protocol):
    """What attention needs from a cache; the serving engine and `sample` provide implementations."""

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store this step's keys/values (B, T, K, E); return all keys/values (B, S, K, E) and the attention
        mask (B, 1, T, S) as bool (True = attend), or None for plain causal attention over S == T."""
        ...


class SegmentMask:
    """Attention kept inside segments: packed training rows hold several examples, and a token may attend only to
    earlier tokens of its own example. It stands where a KV cache goes (both only shape what attention sees), so
    the blocks need no extra argument."""

    def __init__(self, segments: torch.Tensor) -> None:  # (B, T) int: equal ids = one example
        T = segments.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
        self.mask = (segments[:, :, None] == segments[:, None, :]) & causal  # (B, T, T)
        self.mask = self.mask.unsqueeze(1)  # (B, 1, T, T)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return k, v, self.mask


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as HF does, so bf16 runs and exports agree.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    # Whether SDPA shares each key/value head across its query group (enable_gqa) instead of repeating them: the
    # same result without copies. Off here because some of CUDA's fused kernels do not take enable_gqa; whoever
    # runs the model may turn it on (autarky.serve does on CPU).
    share_kv_heads = False

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.head_dim = cfg.head_dim
        self.sliding_window = cfg.sliding_window
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.wo_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        return self.wo(self.attend(*self.project(x, cos, sin), cache))  # (B, T, D)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, T, H, E) and keys (B, T, K, E), both rotated, and values (B, T, K, E)."""
        B, T, _ = x.shape
        # Head counts are inferred (-1) so tensor parallel, which shards heads, needs no change here.
        q = self.wq(x).view(B, T, -1, self.head_dim)
        k = self.wk(x).view(B, T, -1, self.head_dim)
        v = self.wv(x).view(B, T, -1, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)  # over E, per head
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Attention over the cache (if any) plus this step's keys/values: (B, T, H·E), before wo."""
        mask = None
        if cache is not None:
            k, v, mask = cache.update(self.layer, k, v)  # (B, S, K, E), mask (B, 1, T, S)
        if self.sliding_window is not None:
            mask = sliding_window_mask(mask, q.shape[1], k.shape[1], self.sliding_window, q.device)
        return attention(q, k, v, mask, share_kv_heads=self.share_kv_heads)


def sliding_window_mask(mask: torch.Tensor | None, T: int, S: int, window: int,
                        device: torch.device) -> torch.Tensor | None:  # fmt: skip
    """`mask` (B, 1, T, S) (None = causal over S == T) narrowed to each query's `window` newest keys, itself
    included (transformers' `kv_idx > q_idx - sliding_window`). Caches hold key s at position s, so a query's
    newest attended keys are its window; None when no query sees more than `window` keys."""
    if mask is None:
        if T <= window:
            return None
        q, s = torch.arange(T, device=device)[:, None], torch.arange(S, device=device)[None, :]
        return ((s <= q) & (s > q - window))[None, None]  # (1, 1, T, S)
    if S <= window:
        return mask
    newer = mask.flip(-1).int().cumsum(-1).flip(-1)  # (B, 1, T, S): attended keys at or after each key
    return mask & (newer <= window)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *,
              share_kv_heads: bool) -> torch.Tensor:  # fmt: skip
    """q (B, T, H, E) over k, v (B, S, K, E) with a bool mask (B, 1, T, S), or causal when mask is None;
    returns (B, T, H·E)."""
    B, T, H, E = q.shape
    K = k.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T|S, E)
    gqa = K != H and share_kv_heads
    if K != H and not gqa:
        k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                         enable_gqa=gqa)  # (B, H, T, E)
    return out.transpose(1, 2).reshape(B, T, -1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = MoE(cfg) if cfg.is_sparse(layer) else FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # A ModuleDict keyed by layer index keeps names stable when pipeline stages drop layers.
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_T, E)
        self.register_buffer("rope_sin", sin, persistent=False)  # (max_T, E)

    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every parameter and buffer; also used after building on the meta device."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        cfg = self.config
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        with torch.no_grad():
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)
            std = 0.02
            # Residual projections are scaled down with depth (GPT-2 / torchtitan practice).
            residual_std = std / math.sqrt(2 * self.config.n_layers)
            for name, param in self.named_parameters():
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                elif name.endswith(".bias"):
                    param.zero_()
                elif name.endswith(("wo.weight", "w2.weight", "experts.w2")):
                    _normal(param, residual_std, generator)
                else:
                    _normal(param, std, generator)
            for name, buffer in self.named_buffers():
                if name.endswith(("expert_bias", "tokens_per_expert")):
                    buffer.zero_()

    def forward(
        self,
        tokens: torch.Tensor,  # (B, T) token ids
        positions: torch.Tensor | None = None,  # (B, T) or (T,); default 0..T-1
        cache: KVCache | None = None,
        logits_at: torch.Tensor | list[int] | None = None,  # (B,) one position per row; None = every position
        segments: torch.Tensor | None = None,  # (B, T) example ids of packed rows: no attention across examples
        logits_where: torch.Tensor | None = None,  # (N,) indices into the B·T flattened positions
        targets: torch.Tensor | None = None,  # (N,) or (B·T,): the next tokens where logits would be
    ) -> torch.Tensor:
        """Logits (B, T, V), or (B, V) at position logits_at[b] of each row b, or (N, V) at the flat positions
        logits_where: the vocabulary-sized head then runs only where it is used (a decode step, a prompt's last
        token, the trained tokens of a fine-tuning batch). With `targets`, instead of those logits their mean
        fp32 cross-entropy against the targets, the head and loss fused a block of rows at a time
        (autarky.model.head_loss): training never holds the whole (N, V) logits or their gradient."""
        B, T = tokens.shape
        if segments is not None:
            if cache is not None:
                raise ValueError("segments are for packed training rows and cannot be combined with a KV cache")
            cache = SegmentMask(segments)
        if positions is None:
            positions = torch.arange(T, device=tokens.device)
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(B, T)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B, T, E)
        h = self.tok_embeddings(tokens)  # (B, T, D)
        for block in self.layers.values():
            h = block(h, cos, sin, cache)
        if logits_where is not None:
            h = h.flatten(0, 1).index_select(0, logits_where)  # (N, D)
        elif logits_at is not None:
            # (B, D); one new token per row needs no index (the common decode step).
            h = h[:, 0] if T == 1 else h[torch.arange(B, device=h.device), torch.as_tensor(logits_at, device=h.device)]
        if targets is not None:
            return linear_cross_entropy(self.norm(h).flatten(0, -2), self.output.weight, targets)
        return self.output(self.norm(h))  # (B, T, V), (B, V) or (N, V)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; targets (B, T), -100 ignored."""
        logits = self(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def _normal(param: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    if generator is None or param.device.type != "cpu":
        nn.init.normal_(param, mean=0.0, std=std)
    else:
        param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * std)
