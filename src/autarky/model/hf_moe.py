"""Qwen3-MoE in Hugging Face form: its config.json fields and its one-Linear-per-expert weights, against our
stacked experts (autarky.model.moe). Used by autarky.model.hf."""

from __future__ import annotations

import re

import torch
from torch import nn

from autarky.errors import UserError
from autarky.model.llama import ModelConfig
from autarky.model.moe import moe_layers

# Stacked routed experts (ours: one [E, ...] tensor per projection) ↔ transformers' one Linear per expert.
_EXPERT_NAMES = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
_HF_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|down_proj|up_proj)\.weight")


def qwen3_moe_fields(hf: dict, source: str) -> dict:
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


def qwen3_moe_fits(cfg: ModelConfig) -> tuple[bool, dict]:
    """Whether Qwen3-MoE can express `cfg` (a softmax router, top-k renormalised or not, no shared experts, the
    attention of Qwen3), and its config.json fields beyond the common ones."""
    fits = (cfg.qk_norm and cfg.qkv_bias == cfg.wo_bias and cfg.sliding_window is None and not cfg.n_shared_experts
            and cfg.score_func == "softmax" and cfg.route_scale == 1.0)
    return fits, {"attention_bias": cfg.qkv_bias, "use_sliding_window": False, "sliding_window": None,
                  "max_window_layers": cfg.n_layers, **_qwen3_moe_config(cfg)}


def _qwen3_moe_config(cfg: ModelConfig) -> dict:
    return {"num_experts": cfg.n_experts, "num_experts_per_tok": cfg.n_active_experts,
            "moe_intermediate_size": cfg.moe_ffn_dim, "norm_topk_prob": cfg.route_norm, "decoder_sparse_step": 1,
            "mlp_only_layers": list(range(cfg.first_k_dense)) if cfg.n_experts else [],
            "router_aux_loss_coef": cfg.aux_loss_coef, "output_router_logits": False}


def expert_weights(name: str, tensor: torch.Tensor, architecture: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """transformers' weights for one of our MoE tensors: a stacked expert projection → one weight per expert; the
    balancing bias → none, and refused unless zero: it changes which experts are chosen, and transformers'
    Qwen3-MoE router has no such bias, so the exported model would route differently."""
    if not name.endswith("expert_bias"):
        return _unstack_experts(name, tensor, dtype)
    if tensor.any():
        raise UserError(f"{name} is not zero: the balancing bias changes which experts are chosen and "
                        f"{architecture} has no such bias; train with balance_rate 0 (aux_loss_coef for balance) "
                        "to export to transformers")
    return {}


def _unstack_experts(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our `layers.L.feed_forward.experts.wN` [E, ...] → transformers' E weights of that projection."""
    layer, leaf = name.split(".")[1], name.rsplit(".", 1)[1]
    return {f"model.layers.{layer}.mlp.experts.{e}.{_EXPERT_NAMES[leaf]}.weight": w.to("cpu", dtype).contiguous()
            for e, w in enumerate(tensor.detach())}


def stack_experts(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' per-expert weights gathered into our stacked ones (ours' names), removed from `weights`."""
    found: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for hf_name in [n for n in weights if _HF_EXPERT.fullmatch(n)]:
        layer, expert, proj = _HF_EXPERT.fullmatch(hf_name).groups()  # type: ignore[union-attr]
        found.setdefault((layer, proj), {})[int(expert)] = weights.pop(hf_name)
    ours = {v: k for k, v in _EXPERT_NAMES.items()}
    stacked = {}
    for (layer, proj), by_expert in found.items():
        if sorted(by_expert) != list(range(cfg.n_experts)):
            raise UserError(f"layer {layer} {proj}: experts {sorted(by_expert)[:4]}… do not match num_experts "
                            f"{cfg.n_experts}")
        stacked[f"layers.{layer}.feed_forward.experts.{ours[proj]}"] = torch.stack(
            [by_expert[e] for e in range(cfg.n_experts)])
    return stacked


def zero_balancing(model: nn.Module, device: str | torch.device) -> None:
    """A loaded model's balancing buffers (absent from transformers' weights, so still on the meta device): zero."""
    for layer in moe_layers(model).values():
        layer.expert_bias = torch.zeros(layer.n_experts, device=device)
        layer.tokens_per_expert = torch.zeros(layer.n_experts, device=device)
