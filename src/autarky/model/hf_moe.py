"""The mixture-of-experts families in Hugging Face form: their config.json fields and their weights, against our
router, stacked experts, shared experts and balancing bias (autarky.model.moe). Used by autarky.model.hf.

Each family's routing as its transformers class computes it (checked against transformers 5's source):
- Qwen3-MoE: softmax over all experts, top-k, renormalised when norm_topk_prob; no shared experts, no bias.
- Mixtral: the same with the top-k always renormalised; every layer sparse; Mistral's attention.
- dots.llm1 (Dots1): DeepSeek-V3's router: sigmoid scores, top-k by score + e_score_correction_bias (selection
  only), the chosen raw scores renormalised when norm_topk_prob, times routed_scaling_factor; shared experts (one
  SwiGLU of n_shared_experts · moe_intermediate_size, ungated) and the first first_k_dense_replace layers dense;
  Qwen3's attention (q/k norm), attention_bias on all four projections.
- GLM-4.5 (Glm4Moe): dots1's router and experts with Llama's attention (q/k/v biases only, q/k norm optional),
  for a sigmoid model without q/k norm (ours, DeepSeek-V3-like).
Group-limited routing (n_group > 1 with topk_group < n_group) is not ours and is refused.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn

from autarky.errors import UserError
from autarky.model.config import ModelConfig
from autarky.model.moe import moe_layers

MOE_FAMILIES = ("qwen3_moe", "mixtral", "dots1", "glm4_moe")
_BIASED = ("dots1", "glm4_moe")  # their routers carry the balancing bias (e_score_correction_bias)

# Our names under a sparse layer's feed_forward → transformers' under its MoE block; {p} = the projection.
_SPARSE = {"router.weight": "gate.weight", "expert_bias": "gate.e_score_correction_bias",
           "shared.w1.weight": "shared_experts.gate_proj.weight", "shared.w2.weight": "shared_experts.down_proj.weight",
           "shared.w3.weight": "shared_experts.up_proj.weight"}
_PROJECTIONS = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}  # Mixtral keeps w1/w2/w3
_HF_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight")


def _block(family: str) -> str:
    return "block_sparse_moe" if family == "mixtral" else "mlp"


def _projection(family: str, ours: str) -> str:
    return ours if family == "mixtral" else _PROJECTIONS[ours]


# ---------------------------------------------------------------------------------------------- config.json


def has_bias(family: str) -> bool:
    """Whether the family's router carries the balancing bias (e_score_correction_bias)."""
    return family in _BIASED


def moe_features(hf: dict, family: str, source: str) -> dict:
    """Our ModelConfig's attention and expert fields from a config.json of `family`, read as its transformers class
    reads it."""
    bias = bool(hf.get("attention_bias", False))
    rope = hf.get("rope_parameters") or {}
    rotary = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))  # GLM's default: half
    if family == "glm4_moe" and float(rotary) != 1.0:
        raise UserError(f"{source}: partial_rotary_factor is not supported; RoPE must rotate the whole head")
    if family == "dots1" and "sliding_attention" in (hf.get("layer_types") or []):
        raise UserError(f"{source}: sliding attention layers (layer_types) are not supported for dots1")
    window = hf.get("sliding_window") if family == "mixtral" else None
    attention = {"qwen3_moe": {"qkv_bias": bias, "wo_bias": bias, "qk_norm": True},
                 "mixtral": {"sliding_window": int(window) if window else None},
                 "dots1": {"qkv_bias": bias, "wo_bias": bias, "qk_norm": True},
                 "glm4_moe": {"qkv_bias": bias, "qk_norm": bool(hf.get("use_qk_norm", False))}}[family]
    return {**attention, **_moe_fields(hf, family, source)}


def _moe_fields(hf: dict, family: str, source: str) -> dict:
    if family == "mixtral":
        width = int(hf.get("intermediate_size", 14_336))  # Mixtral's intermediate_size is one expert's
        return {"n_experts": int(hf.get("num_local_experts", 8)), "n_active_experts": int(hf.get("num_experts_per_tok", 2)),
                "moe_ffn_dim": width, "route_norm": True, "balance_rate": 0.0}
    if family in _BIASED:
        groups, top_groups = int(hf.get("n_group") or 1), int(hf.get("topk_group") or 1)
        if groups != 1 and top_groups != groups:
            raise UserError(f"{source}: group-limited routing (n_group {groups}, topk_group {top_groups}) is not "
                            "supported; only n_group 1 (or topk_group = n_group)")
        return {"n_experts": int(hf.get("n_routed_experts") or hf.get("num_local_experts") or 0),
                "n_active_experts": int(hf["num_experts_per_tok"]), "moe_ffn_dim": int(hf["moe_intermediate_size"]),
                "n_shared_experts": int(hf.get("n_shared_experts") or 0),
                "first_k_dense": int(hf.get("first_k_dense_replace") or 0), "score_func": "sigmoid",
                "route_norm": bool(hf.get("norm_topk_prob", False)),
                "route_scale": float(hf.get("routed_scaling_factor", 1.0))}
    return _qwen3_moe_fields(hf, source)


def _qwen3_moe_fields(hf: dict, source: str) -> dict:
    """Qwen3-MoE's experts: sparse layers are those outside mlp_only_layers at every decoder_sparse_step-th layer;
    ours are every layer after the first k dense ones, so the dense layers must be a leading run."""
    experts = int(hf.get("num_experts") or hf.get("num_local_experts") or 0)  # transformers 5 writes the latter
    if not experts:
        return {}
    step = int(hf.get("decoder_sparse_step", 1))
    dense = sorted(int(i) for i in hf.get("mlp_only_layers") or [])
    if step != 1 or dense != list(range(len(dense))):
        raise UserError(f"{source}: decoder_sparse_step {step} / mlp_only_layers {dense} are not supported; "
                        "the dense layers must be the first ones (decoder_sparse_step 1)")
    # balance_rate 0: transformers' router has no selection bias, so a loaded model routes (and exports) the same.
    return {"n_experts": experts, "n_active_experts": int(hf.get("num_experts_per_tok", 8)),
            "moe_ffn_dim": int(hf.get("moe_intermediate_size", 768)),
            "route_norm": bool(hf.get("norm_topk_prob", False)), "first_k_dense": len(dense), "balance_rate": 0.0}


def moe_fits(cfg: ModelConfig) -> tuple[bool, dict]:
    """Whether cfg.family's transformers class can express `cfg`'s attention and routing, and its config.json
    fields beyond the common ones."""
    if not cfg.n_experts:
        return False, {}
    no_window = {"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layers}
    if cfg.family == "mixtral":
        fits = (not (cfg.qkv_bias or cfg.wo_bias or cfg.qk_norm or cfg.n_shared_experts or cfg.first_k_dense)
                and cfg.score_func == "softmax" and cfg.route_norm and cfg.route_scale == 1.0)
        return fits, {"sliding_window": cfg.sliding_window, "num_local_experts": cfg.n_experts,
                      "num_experts_per_tok": cfg.n_active_experts, "intermediate_size": cfg.moe_ffn_dim,
                      "router_aux_loss_coef": cfg.aux_loss_coef, "router_jitter_noise": 0.0,
                      "output_router_logits": False}
    if cfg.family in _BIASED:
        attention = (cfg.qk_norm and cfg.qkv_bias == cfg.wo_bias) if cfg.family == "dots1" else not cfg.wo_bias
        fits = attention and cfg.sliding_window is None and cfg.score_func == "sigmoid" and (
            cfg.family == "dots1" or cfg.rope_scaling is None)
        fields = {"attention_bias": cfg.qkv_bias, "n_routed_experts": cfg.n_experts,
                  "num_experts_per_tok": cfg.n_active_experts, "moe_intermediate_size": cfg.moe_ffn_dim,
                  "n_shared_experts": cfg.n_shared_experts, "first_k_dense_replace": cfg.first_k_dense,
                  "norm_topk_prob": cfg.route_norm, "routed_scaling_factor": cfg.route_scale, "n_group": 1,
                  "topk_group": 1, "output_router_logits": False}
        if cfg.family == "glm4_moe":
            rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": 1.0}
            return fits, {**fields, "use_qk_norm": cfg.qk_norm, "partial_rotary_factor": 1.0,
                          "rope_parameters": rope, "num_nextn_predict_layers": 0}
        return fits, {**fields, **no_window, "layer_types": ["full_attention"] * cfg.n_layers}
    fits = (cfg.qk_norm and cfg.qkv_bias == cfg.wo_bias and cfg.sliding_window is None and not cfg.n_shared_experts
            and cfg.score_func == "softmax" and cfg.route_scale == 1.0)
    return fits, {"attention_bias": cfg.qkv_bias, **no_window, "num_experts": cfg.n_experts,
                  "num_experts_per_tok": cfg.n_active_experts, "moe_intermediate_size": cfg.moe_ffn_dim,
                  "norm_topk_prob": cfg.route_norm, "decoder_sparse_step": 1,
                  "mlp_only_layers": list(range(cfg.first_k_dense)), "router_aux_loss_coef": cfg.aux_loss_coef,
                  "output_router_logits": False}


def written_as(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the family it is exported as: its own, or for a model of our own (family "llama") with experts
    the first MoE family whose transformers class expresses it exactly."""
    if cfg.family != "llama" or not cfg.n_experts:
        return cfg
    for family in MOE_FAMILIES:
        if moe_fits(replace(cfg, family=family))[0]:
            return replace(cfg, family=family)
    return cfg


# ---------------------------------------------------------------------------------------------- weights


def is_sparse_weight(name: str, cfg: ModelConfig) -> bool:
    """Whether our weight `name` belongs to a sparse layer's feed-forward (router, experts, shared, bias)."""
    parts = name.split(".")
    return (len(parts) > 3 and parts[0] == "layers" and parts[2] == "feed_forward"
            and cfg.is_sparse(int(parts[1])))


def sparse_weights(name: str, tensor: torch.Tensor, cfg: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """transformers' weights for one of our sparse-layer tensors: a stacked expert projection → one weight per
    expert; the balancing bias → e_score_correction_bias where the family has it, else none, and refused unless
    zero: it changes which experts are chosen, so a router without it would route differently."""
    layer, rest = name.split(".", 3)[1], name.split(".", 3)[3]
    prefix = f"model.layers.{layer}.{_block(cfg.family)}"
    if rest in ("experts.w1", "experts.w2", "experts.w3"):
        proj = _projection(cfg.family, rest.rsplit(".", 1)[1])
        return {f"{prefix}.experts.{e}.{proj}.weight": w.to("cpu", dtype).contiguous()
                for e, w in enumerate(tensor.detach())}
    if rest == "expert_bias" and cfg.family not in _BIASED:
        if tensor.any():
            raise UserError(f"{name} is not zero: the balancing bias changes which experts are chosen and "
                            f"{cfg.family}'s router has no such bias; export a sigmoid-routed model as dots1 or "
                            "glm4_moe, or train with balance_rate 0 (aux_loss_coef for balance)")
        return {}
    # The bias stays fp32 as transformers keeps it (a buffer of its own dtype).
    out_dtype = torch.float32 if rest == "expert_bias" else dtype
    return {f"{prefix}.{_SPARSE[rest]}": tensor.detach().to("cpu", out_dtype).contiguous()}


def stack_experts(weights: dict[str, torch.Tensor], cfg: ModelConfig, device: str | torch.device,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:  # fmt: skip
    """transformers' sparse-layer weights (router, per-expert projections, shared experts, bias) under our names,
    the experts stacked, on `device` in `dtype` (the bias in fp32, as both keep it); each is removed from `weights`.
    GLM-4.5's multi-token-prediction layers (past num_hidden_layers) are dropped, as its transformers class does."""
    ours: dict[str, torch.Tensor] = {}
    if cfg.family == "glm4_moe":
        for name in [n for n in weights if _layer_index(n) >= cfg.n_layers]:
            del weights[name]
    found: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for hf_name in [n for n in weights if _HF_EXPERT.fullmatch(n)]:
        layer, expert, proj = _HF_EXPERT.fullmatch(hf_name).groups()  # type: ignore[union-attr]
        found.setdefault((layer, proj), {})[int(expert)] = weights.pop(hf_name)
    by_proj = {_projection(cfg.family, p): p for p in _PROJECTIONS}
    for (layer, proj), by_expert in found.items():
        if proj not in by_proj:
            raise UserError(f"unexpected expert weight {proj!r} in layer {layer} for a {cfg.family} model")
        if sorted(by_expert) != list(range(cfg.n_experts)):
            raise UserError(f"layer {layer} {proj}: experts {sorted(by_expert)[:4]}… do not match the config's "
                            f"{cfg.n_experts} experts")
        ours[f"layers.{layer}.feed_forward.experts.{by_proj[proj]}"] = torch.stack(
            [by_expert[e] for e in range(cfg.n_experts)])
    block = _block(cfg.family)
    for layer in (i for i in range(cfg.n_layers) if cfg.is_sparse(i)):
        for mine, theirs in _SPARSE.items():
            tensor = weights.pop(f"model.layers.{layer}.{block}.{theirs}", None)
            if tensor is not None:
                ours[f"layers.{layer}.feed_forward.{mine}"] = tensor
    return {name: t.to(device=device, dtype=torch.float32 if name.endswith("expert_bias") else dtype)
            for name, t in ours.items()}


def _layer_index(hf_name: str) -> int:
    parts = hf_name.split(".")
    return int(parts[2]) if hf_name.startswith("model.layers.") and parts[2].isdigit() else -1


def zero_balancing(model: nn.Module, device: str | torch.device) -> None:
    """A loaded model's balancing buffers absent from its weights (still on the meta device): zero."""
    for layer in moe_layers(model).values():
        if layer.expert_bias.is_meta:
            layer.expert_bias = torch.zeros(layer.n_experts, device=device)
        layer.tokens_per_expert = torch.zeros(layer.n_experts, device=device)
