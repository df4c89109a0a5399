"""What the planner needs to know about a model: parameters (total and active) and, when known, its shape.

Three ways in: a preset of `autarky.model.sizes`, a Hugging Face `config.json` (Llama, Mistral, Qwen2/2.5, Qwen3,
Mixtral and Qwen-MoE key names; q/k/v biases, q/k norms and an explicit head_dim are counted), or a raw parameter
count with optional shape flags. Without shape flags the shape is estimated Llama-style (hidden ≈ 128·layers,
N ≈ 12·L·h²) and the result says so.

Parameter convention: N counts every parameter (PaLM / nanoGPT), tied embeddings once. For mixture-of-experts,
`active_params` (what one token touches) drives compute and `params` (all experts) drives memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autarky.errors import UserError
from autarky.model.config import ModelConfig, active_parameter_count, parameter_count
from autarky.model.sizes import preset


@dataclass(frozen=True)
class ModelShape:
    name: str
    params: int  # total, all experts
    active_params: int  # per token; == params for dense models
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    seq_len: int
    experts: int = 1
    active_experts: int = 1
    expert_params: int = 0  # the part of `params` that expert parallelism shards
    lookup_params: int = 0  # untied input embedding: a lookup, not a matmul (excluded by the "autarky" rule)
    shape_source: str = "exact"

    @property
    def is_moe(self) -> bool:
        return self.experts > 1

    @property
    def layer_params(self) -> float:
        """Parameters of one transformer block (all experts), for ZeRO-3's gathered-layer buffer."""
        return (self.params - 2 * self.vocab * self.hidden) / self.layers


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UserError(f"--{name} must be positive, got {value}")


def _moe_params(cfg: ModelConfig, experts: int, active_experts: int, expert_ffn: int) -> tuple[int, int, int]:
    """(total, active, expert) parameters of a Llama shape whose FFN is E experts of width expert_ffn."""
    dense = parameter_count(cfg) - cfg.n_layers * 3 * cfg.dim * cfg.ffn_dim
    per_expert = 3 * cfg.dim * expert_ffn
    router = cfg.dim * experts
    expert_total = cfg.n_layers * per_expert * experts
    total = dense + expert_total + cfg.n_layers * router
    active = dense + cfg.n_layers * (per_expert * active_experts + router)
    return total, active, expert_total


def from_config(name: str, cfg: ModelConfig, experts: int = 1, active_experts: int = 1,
                expert_ffn: int | None = None, seq_len: int | None = None, shape_source: str = "exact",
                head_dim: int | None = None) -> ModelShape:
    if experts < 1 or active_experts < 1 or active_experts > experts:
        raise UserError(f"--active-experts ({active_experts}) must be between 1 and --experts ({experts})")
    if cfg.n_experts:  # the model's own experts (an MoE preset or config.json): exact, shared and dense layers too
        experts, active_experts, expert_ffn = cfg.n_experts, cfg.n_active_experts, cfg.moe_ffn_dim
        total, active = parameter_count(cfg), active_parameter_count(cfg)
        sparse = sum(cfg.is_sparse(i) for i in range(cfg.n_layers))
        expert_total = sparse * experts * 3 * cfg.dim * expert_ffn
    elif experts > 1:
        total, active, expert_total = _moe_params(cfg, experts, active_experts, expert_ffn or cfg.ffn_dim)
    else:
        total = active = parameter_count(cfg)
        expert_total = 0
    return ModelShape(
        name=name, params=total, active_params=active, layers=cfg.n_layers, hidden=cfg.dim, heads=cfg.n_heads,
        kv_heads=cfg.n_kv_heads, head_dim=head_dim or cfg.head_dim, ffn=expert_ffn or cfg.ffn_dim,
        vocab=cfg.vocab_size, seq_len=seq_len or cfg.max_seq_len, experts=experts, active_experts=active_experts,
        expert_params=expert_total, lookup_params=0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim,
        shape_source=shape_source)


def from_preset(name: str, seq_len: int | None = None, experts: int = 1, active_experts: int = 1) -> ModelShape:
    return from_config(name, preset(name), experts, active_experts, seq_len=seq_len)


def from_hf_config(path: Path, seq_len: int | None = None) -> ModelShape:
    """A Hugging Face config.json (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--hf-config {path} does not exist; pass a Hugging Face config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--hf-config {path} is not readable JSON: {exc}") from None
    try:
        hidden, layers = int(raw["hidden_size"]), int(raw["num_hidden_layers"])
        heads = int(raw["num_attention_heads"])
        model_type = str(raw.get("model_type") or "")
        bias = bool(raw.get("attention_bias"))
        qkv_bias_always = model_type in ("qwen2", "qwen2_moe")  # their q/k/v projections always have biases
        no_wo_bias = qkv_bias_always or model_type == "glm4_moe"  # attention_bias: q/k/v only
        qk_norm = model_type.startswith("qwen3") or model_type == "dots1" or bool(raw.get("use_qk_norm"))
        cfg = ModelConfig(
            vocab_size=int(raw["vocab_size"]), dim=hidden, n_layers=layers, n_heads=heads,
            n_kv_heads=int(raw.get("num_key_value_heads") or heads), ffn_dim=int(raw["intermediate_size"]),
            max_seq_len=int(raw.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)), head_dim=int(raw.get("head_dim") or 0),
            qkv_bias=bias or qkv_bias_always, wo_bias=bias and not no_wo_bias, qk_norm=qk_norm,
            **_moe_fields(raw, layers))
    except KeyError as exc:
        raise UserError(f"--hf-config {path} lacks {exc.args[0]!r}; a Llama-style config.json is needed") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"--hf-config {path}: {exc}") from None
    name = raw.get("_name_or_path") or path.parent.name or "hf-model"
    return from_config(str(name), cfg, seq_len=seq_len)


def _moe_fields(raw: dict, layers: int) -> dict:
    """The experts of a Mixtral / Qwen-MoE / DeepSeek-style config.json as ModelConfig fields: which layers are
    dense (mlp_only_layers, decoder_sparse_step, first_k_dense_replace) only matters for counting, so they are
    counted into first_k_dense; shared experts from n_shared_experts or shared_expert_intermediate_size."""
    experts = int(raw.get("num_local_experts") or raw.get("num_experts") or raw.get("n_routed_experts") or 0)
    if experts <= 1:
        return {}
    step = int(raw.get("decoder_sparse_step") or raw.get("moe_layer_freq") or 1)
    dense = {int(i) for i in raw.get("mlp_only_layers") or []}
    first = int(raw.get("first_k_dense_replace") or 0)
    sparse = sum(i not in dense and (i + 1) % step == 0 and i >= first for i in range(layers))
    width = int(raw.get("moe_intermediate_size") or raw["intermediate_size"])
    shared = int(raw.get("n_shared_experts") or 0) or round(int(raw.get("shared_expert_intermediate_size") or 0) / width)
    return {"n_experts": experts, "n_active_experts": int(raw.get("num_experts_per_tok") or 1), "moe_ffn_dim": width,
            "n_shared_experts": shared, "first_k_dense": layers - sparse}


def from_params(
    params: float, active_params: float | None = None, layers: int | None = None, hidden: int | None = None,
    heads: int | None = None, kv_heads: int | None = None, head_dim: int | None = None, ffn: int | None = None,
    vocab: int | None = None, seq_len: int | None = None, experts: int = 1, active_experts: int = 1,
) -> ModelShape:
    """A raw parameter count; shape flags refine attention FLOPs and activation memory."""
    for flag, value in [("params", params), ("active-params", active_params), ("layers", layers),
                        ("hidden", hidden), ("heads", heads), ("kv-heads", kv_heads), ("head-dim", head_dim),
                        ("ffn", ffn), ("vocab", vocab), ("seq-len", seq_len)]:
        _positive(flag, value)
    if active_params is not None and active_params > params:
        raise UserError(f"--active-params ({active_params:.3g}) exceeds --params ({params:.3g})")
    source = "given"
    if layers is None or hidden is None:
        source = "estimated Llama-style from N (hidden ≈ 128·layers); pass --layers/--hidden for exact activations"
        layers = layers or max(1, round((params / (12 * 128**2)) ** (1 / 3)))
        hidden = hidden or max(128, round((params / (12 * layers)) ** 0.5 / 128) * 128)
    heads = heads or max(1, hidden // 128)
    kv_heads = kv_heads or (8 if heads % 8 == 0 else heads)
    if heads % kv_heads:
        raise UserError(f"--heads ({heads}) must be divisible by --kv-heads ({kv_heads})")
    if experts > 1 and active_params is None:
        raise UserError("a mixture-of-experts --params count needs --active-params (or use a preset/--hf-config)")
    if active_experts > experts:
        raise UserError(f"--active-experts ({active_experts}) must not exceed --experts ({experts})")
    total, active = int(params), int(active_params or params)
    # Experts hold what the token does not touch, scaled back up by E/(E-K) … only known for MoE inputs.
    expert = int((total - active) * experts / (experts - active_experts)) if experts > active_experts else 0
    return ModelShape(
        name=f"{params:.3g} params", params=total, active_params=active, layers=layers, hidden=hidden,
        heads=heads, kv_heads=kv_heads, head_dim=head_dim or hidden // heads, ffn=ffn or int(3.5 * hidden),
        vocab=vocab or 128_256, seq_len=seq_len or 8192, experts=experts, active_experts=active_experts,
        expert_params=min(expert, total), shape_source=source)
