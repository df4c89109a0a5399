"""Training FLOPs, compute-optimal tokens, predicted loss and GPU-hours (planner.md §1.1–1.3, §1.5).

FLOPs rules (the numerator of MFU must match the rule, so the plan records which one it used):
- "6nd":      C = 6·N·D (Transformer Math 101; what published GPU-hour tables and Epoch use)
- "6nd+attn": C = (6·N + 12·L·H·Q·T)·D (PaLM App. B model FLOPs; the numerator of autarky's measured MFU)
- "8nd":      C = 8·N·D, full activation recompute (Megatron eq. 4, time ≈ 8·T·P/(n·X)); utilisation is then HFU
- "autarky":  (6·N_matmul + 12·L·H·Q·T)·D with N_matmul = N less an untied input embedding (a lookup): exactly
              `autarky.model.config.flops_per_token`, the numerator of the MFU `autarky train` logs
N is the active parameter count (MoE: compute scales with the parameters a token touches), counting every
parameter (PaLM / nanoGPT convention) except under "autarky".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autarky.plan.shape import ModelShape

FlopsRule = Literal["6nd", "6nd+attn", "8nd", "autarky"]

TOKENS_PER_PARAM = 20.0
TOKENS_RULE = "compute-optimal: D = 20·N (Chinchilla Approaches 1-2, Table 3)"

# Chinchilla parametric fit L = E + A/N^α + B/D^β, rounded constants as commonly quoted (arXiv:2203.15556).
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
CHINCHILLA_LABEL = "Chinchilla Approach 3 fit, rounded constants E=1.69 A=406.4 B=410.7 α=0.34 β=0.28"


def attention_flops_per_token(shape: ModelShape, seq_len: int | None = None) -> float:
    """12·L·H·Q·T: the QKᵀ and AV matmuls, forward and backward (PaLM App. B)."""
    return 12.0 * shape.layers * shape.heads * shape.head_dim * (seq_len or shape.seq_len)


def flops_per_token_by_rule(shape: ModelShape, rule: FlopsRule) -> float:
    """Training FLOPs per token of any planned shape (MoE, HF configs) under a published rule. Not the model's
    `flops_per_token(cfg)`, which knows only our Llama: under "autarky" the two agree on it (the plan-from-run
    test holds them to that)."""
    n = float(shape.active_params)
    if rule == "6nd":
        return 6 * n
    if rule == "8nd":
        return 8 * n
    if rule == "autarky":
        n -= shape.lookup_params
    return 6 * n + attention_flops_per_token(shape)


@dataclass(frozen=True)
class Compute:
    tokens: float
    tokens_rule: str
    flops_6nd: float
    flops_with_attention: float
    total_flops: float  # under `rule`; what GPU-hours are computed from
    rule: FlopsRule
    gpu_hours_compute: float  # pure compute at the given MFU, before goodput


def compute_optimal_tokens(params: float) -> float:
    return TOKENS_PER_PARAM * params


def chinchilla_loss(params: float, tokens: float) -> float:
    """Predicted final loss (nats/token on MassiveText); a fit to Chinchilla's data, not a promise for yours."""
    c = CHINCHILLA
    return c["E"] + c["A"] / params ** c["alpha"] + c["B"] / tokens ** c["beta"]


def chinchilla_closed_form_optimum(flops: float) -> tuple[float, float]:
    """(N_opt, D_opt) from eq. 4 of the paper with the rounded constants: shows why we do NOT allocate by it."""
    c = CHINCHILLA
    a, b = c["beta"] / (c["alpha"] + c["beta"]), c["alpha"] / (c["alpha"] + c["beta"])
    g = (c["alpha"] * c["A"] / (c["beta"] * c["B"])) ** (1 / (c["alpha"] + c["beta"]))
    return g * (flops / 6) ** a, (flops / 6) ** b / g


def model_flops_utilization(tokens_per_s: float, flops_per_token: float, devices: int, peak_flops: float) -> float:
    """MFU = observed tokens/s × model FLOPs per token / (devices × peak)."""
    return tokens_per_s * flops_per_token / (devices * peak_flops)


def plan_compute(shape: ModelShape, tokens: float, tokens_rule: str, rule: FlopsRule, peak_flops: float,
                 mfu: float) -> Compute:
    total = flops_per_token_by_rule(shape, rule) * tokens
    return Compute(
        tokens=tokens, tokens_rule=tokens_rule,
        flops_6nd=flops_per_token_by_rule(shape, "6nd") * tokens,
        flops_with_attention=flops_per_token_by_rule(shape, "6nd+attn") * tokens,
        total_flops=total, rule=rule, gpu_hours_compute=total / (peak_flops * mfu * 3600))
