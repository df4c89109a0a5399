"""The model's configuration, without torch: the shape and family features of one Llama-architecture model, and
the counts that follow from the shape alone (parameters, training FLOPs per token).

Kept apart from the PyTorch modules so that configs, the planner and the CLI's start-up read and validate model
shapes without importing torch (~200 MB and a second or more of start-up); autarky.model.llama builds on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral", "dots1", "glm4_moe")  # Hugging Face model_type each config is read from / written as


@dataclass(frozen=True)
class RopeScaling:
    """`rope_scaling` with `rope_type = "llama3"` in a Hugging Face config.json."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        if not (self.factor > 0 and 0 < self.low_freq_factor < self.high_freq_factor):
            raise ValueError(f"rope_scaling needs factor > 0 and 0 < low_freq_factor < high_freq_factor, got {self}")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_seq_len: int
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # The family features; the defaults are the plain Llama (and to_dict leaves them out).
    head_dim: int = 0  # width of one head; 0 = dim // n_heads (Qwen3 sets its own)
    qkv_bias: bool = False  # biases on wq/wk/wv (Qwen2, attention_bias)
    wo_bias: bool = False  # bias on wo (attention_bias of Llama / Qwen3)
    qk_norm: bool = False  # RMSNorm over each query and key head before RoPE (Qwen3)
    rope_scaling: RopeScaling | None = None  # Llama 3.1's rope_type "llama3"
    sliding_window: int | None = None  # each token attends to at most this many (itself included; Mistral)
    family: str = "llama"
    # Mixture of experts (autarky.model.moe); n_experts 0 = every layer dense.
    n_experts: int = 0  # routed experts per sparse layer
    n_active_experts: int = 0  # top-k: routed experts each token uses
    n_shared_experts: int = 0  # experts every token uses (one SwiGLU of n_shared · moe_ffn_dim)
    moe_ffn_dim: int = 0  # hidden width of one expert
    first_k_dense: int = 0  # the first layers keep the dense feed-forward (ffn_dim)
    score_func: str = "softmax"  # router scores: softmax (Qwen3-MoE, Mixtral) or sigmoid (DeepSeek-V3)
    route_norm: bool = False  # renormalise the chosen experts' scores to sum to 1 (norm_topk_prob)
    route_scale: float = 1.0  # gate weights times this (DeepSeek-V3: 2.5)
    balance_rate: float = 1e-3  # expert_bias step per optimizer step (aux-loss-free balancing); 0 = off
    aux_loss_coef: float = 0.0  # weight of the classic auxiliary balance loss; 0 = off
    z_loss_coef: float = 0.0  # weight of the router z-loss (ST-MoE); 0 = off

    def __post_init__(self) -> None:
        if not self.head_dim and self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be positive, got {self.sliding_window}")
        if self.n_experts:
            if not 1 <= self.n_active_experts <= self.n_experts or self.moe_ffn_dim < 1:
                raise ValueError(f"an MoE needs 1 <= n_active_experts <= n_experts ({self.n_experts}) and a "
                                 f"positive moe_ffn_dim, got {self.n_active_experts} and {self.moe_ffn_dim}")
            if self.score_func not in ("softmax", "sigmoid"):
                raise ValueError(f"score_func must be softmax or sigmoid, got {self.score_func!r}")
        # Frozen: derived values are filled in once here (a dict from to_dict() comes back as the same config).
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    def is_sparse(self, layer: int) -> bool:
        """Whether `layer` has the MoE feed-forward."""
        return self.n_experts > 0 and layer >= self.first_k_dense

    def to_dict(self) -> dict:
        """Every field that differs from the plain Llama's default, and always the shape."""
        values = asdict(self)
        derived = {"head_dim": self.dim // self.n_heads}
        return {f.name: values[f.name] for f in fields(self)
                if f.name in _SHAPE_FIELDS or values[f.name] != derived.get(f.name, f.default)}


_SHAPE_FIELDS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len", "rope_theta",
                 "norm_eps", "tie_embeddings")



def parameter_count(cfg: ModelConfig, include_embedding: bool = True) -> int:
    """Exact parameter count from the shape alone (tied embeddings counted once)."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    attention = cfg.dim * q * 2 + cfg.dim * kv * 2
    attention += (q + 2 * kv) * cfg.qkv_bias + cfg.dim * cfg.wo_bias + 2 * cfg.head_dim * cfg.qk_norm
    sparse = sum(cfg.is_sparse(i) for i in range(cfg.n_layers))
    experts = cfg.n_experts + cfg.n_shared_experts
    ffn = (cfg.n_layers - sparse) * 3 * cfg.dim * cfg.ffn_dim
    ffn += sparse * (3 * cfg.dim * cfg.moe_ffn_dim * experts + cfg.dim * cfg.n_experts)  # experts + router
    embedding = cfg.vocab_size * cfg.dim
    output = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim
    total = cfg.n_layers * (attention + 2 * cfg.dim) + ffn + cfg.dim + output
    return total + embedding if include_embedding else total


def active_parameter_count(cfg: ModelConfig, include_embedding: bool = True) -> int:
    """Parameters one token uses: the total less the routed experts it does not choose (= the total if dense)."""
    sparse = sum(cfg.is_sparse(i) for i in range(cfg.n_layers))
    unused = sparse * (cfg.n_experts - cfg.n_active_experts) * 3 * cfg.dim * cfg.moe_ffn_dim
    return parameter_count(cfg, include_embedding) - unused


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training model FLOPs per token (PaLM App. B): 6N + 12·L·H·E·T, N excluding the input embedding
    (a lookup, not a matmul; the active parameters of an MoE). This is the numerator of MFU everywhere in autarky."""
    seq_len = seq_len or cfg.max_seq_len
    matmul_params = active_parameter_count(cfg, include_embedding=False)
    if cfg.tie_embeddings:
        matmul_params += cfg.vocab_size * cfg.dim  # the tied output projection is still a matmul
    return 6 * matmul_params + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
