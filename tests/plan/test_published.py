"""The planner against published training runs (planner.md §1.3, §3). Every expected number comes from a paper or
its direct arithmetic, never from the planner; each assertion states its tolerance."""

import pytest

from autarky.model.sizes import preset
from autarky.plan.compute import (
    attention_flops_per_token,
    compute_optimal_tokens,
    flops_per_token_by_rule,
    model_flops_utilization,
)
from autarky.plan.planner import PlanRequest, plan
from autarky.plan.shape import from_params, from_preset

LLAMA_405B = dict(preset="405b", tokens=15.6e12, gpu="h100", gpus=16_384)


def test_llama3_405b_flops_gpu_hours_and_days():
    """arXiv:2407.21783: 3.8e25 FLOPs; 41% BF16 MFU at 16,384 H100 → 26.0M GPU-h, 66 days of pure compute."""
    d = plan(PlanRequest(**LLAMA_405B, mfu=0.41)).to_dict()
    assert d["total_flops"] == pytest.approx(3.8e25, rel=0.01)  # ±1%
    assert d["flops_with_attention"] == pytest.approx(4.12e25, rel=0.01)  # ±1%
    assert d["gpu_hours_compute"] == pytest.approx(26.0e6, rel=0.01)  # ±1%
    assert d["days_compute"] == pytest.approx(66, abs=1)  # ±1 day
    assert d["hardware"]["precision"] == "bf16" and d["hardware"]["peak_tflops"] == pytest.approx(989.4)


def test_llama3_405b_reliability_model_reproduces_published_gpu_hours():
    """The published 30.84M H100-hours include downtime: our goodput model (Llama 3 failure rate, 1-min checkpoint
    writes, 10-min restarts, Daly interval) must land within 2% of it, and ≈78 days on 16,384 GPUs (±2 days)."""
    d = plan(PlanRequest(**LLAMA_405B, mfu=0.41)).to_dict()
    assert d["gpu_hours"] == pytest.approx(30.84e6, rel=0.02)
    assert d["days"] == pytest.approx(78, abs=2)
    assert 0.80 <= d["goodput"] <= 0.90  # the reference: "a goodput/overhead factor of ~0.85"


@pytest.mark.parametrize("mfu,days", [(0.43, 63), (0.38, 71)])
def test_llama3_405b_mfu_range_gives_63_to_71_days(mfu, days):
    d = plan(PlanRequest(**LLAMA_405B, mfu=mfu)).to_dict()
    assert d["days_compute"] == pytest.approx(days, abs=1)  # ±1 day (the reference rounds to whole days)


def test_llama3_405b_attention_term_is_8_percent():
    """12·L·H·Q·T = 2.03e11 per token at T = 8,192 against 6N = 2.44e12 (+8.3%)."""
    shape = from_preset("405b")
    assert attention_flops_per_token(shape) == pytest.approx(2.03e11, rel=0.005)
    assert attention_flops_per_token(shape) / flops_per_token_by_rule(shape, "6nd") == pytest.approx(0.083, abs=0.001)


@pytest.mark.parametrize("name,published,rel", [
    ("405b", 405_853_388_800, 0.0),  # config.json count, exact
    ("70b", 70_553_706_496, 0.0),  # config.json count, exact
    ("8b", 8.0e9, 0.01),  # "8.0B" in arXiv:2407.21783 Table 3, ±1%
])
def test_llama3_parameter_counts(name, published, rel):
    assert from_preset(name).params == pytest.approx(published, rel=rel)


def test_deepseek_v3_moe_compute_scales_with_active_parameters():
    """arXiv:2412.19437: 37B active of 671B, 14.8T tokens, 2,048 H800, 180K GPU-hours per trillion tokens →
    2.664M GPU-hours, ≈54 days. The calibration is end-to-end, so goodput is 1 here."""
    calibrated_mfu = 6 * 37e9 * 1e12 / (180e3 * 3600 * 989.4e12)
    req = dict(params=671e9, active_params=37e9, experts=256, active_experts=8, tokens=14.8e12, gpu="h800",
               gpus=2048, mfu=calibrated_mfu, goodput=1.0)
    d = plan(PlanRequest(**req)).to_dict()
    assert d["total_flops"] == pytest.approx(3.3e24, rel=0.01)  # ±1%
    assert d["gpu_hours"] == pytest.approx(2.664e6, rel=0.005)  # ±0.5%
    assert d["days"] == pytest.approx(54, abs=0.5)  # ±0.5 day
    assert d["mfu"] == pytest.approx(0.35, abs=0.01)  # "implied 35% of BF16-equivalent peak", ±1 pt
    dense = plan(PlanRequest(**{**req, "active_params": None, "experts": 1, "active_experts": 1})).to_dict()
    assert dense["total_flops"] / d["total_flops"] == pytest.approx(671 / 37, rel=1e-6)
    # Memory follows the total: the same model planned dense holds the same weights.
    assert d["memory_breakdown_gb"]["weights"] == pytest.approx(dense["memory_breakdown_gb"]["weights"], rel=1e-6)


def test_megatron_gpt3_175b_example_takes_34_days():
    """Narayanan et al. 2021 eq. 4: 8·T·P/(n·X), 300B tokens, 1,024 A100 at 140 TFLOP/s → ≈34 days (±0.5)."""
    d = plan(PlanRequest(params=175e9, layers=96, hidden=12288, heads=96, vocab=50257, seq_len=2048,
                         tokens=300e9, gpu="a100-80gb", gpus=1024, tflops_per_gpu=140, flops_rule="8nd",
                         goodput=1.0)).to_dict()
    assert d["days"] == pytest.approx(34, abs=0.5)
    assert d["flops_rule"]["name"] == "8nd"


def test_palm_540b_mfu_with_and_without_attention():
    """PaLM App. B: 238.3K tokens/s on 6,144 TPU v4 at 275 TFLOP/s → MFU 45.7% (6N) and 46.2% (with attention)."""
    palm = from_params(540e9, layers=118, hidden=18432, heads=48, head_dim=256, seq_len=2048, vocab=256_000)
    without = model_flops_utilization(238.3e3, flops_per_token_by_rule(palm, "6nd"), 6144, 275e12)
    with_attention = model_flops_utilization(238.3e3, flops_per_token_by_rule(palm, "6nd+attn"), 6144, 275e12)
    assert without == pytest.approx(0.457, abs=0.001)  # ±0.1 pt
    assert with_attention == pytest.approx(0.462, abs=0.001)  # ±0.1 pt


@pytest.mark.parametrize("params,tokens", [(1e9, 20.2e9), (10e9, 205.1e9), (67e9, 1.5e12), (175e9, 3.7e12),
                                           (280e9, 5.9e12), (1e12, 21.2e12)])
def test_compute_optimal_tokens_match_chinchilla_table_3(params, tokens):
    # Table 3's ratios run from 20.0 to 22.4 tokens/param; D = 20·N stays within 11% of every row.
    assert compute_optimal_tokens(params) == pytest.approx(tokens, rel=0.11)


def test_preset_shape_is_the_model_package_shape():
    shape, cfg = from_preset("70b"), preset("70b")
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads) == (cfg.n_layers, cfg.dim, cfg.n_heads,
                                                                         cfg.n_kv_heads)
