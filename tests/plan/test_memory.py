"""Memory per GPU against the ZeRO paper and the Llama 3 405B layout (planner.md §1.4)."""

import pytest

from autarky.plan.layouts import find_layouts
from autarky.plan.memory import GB, Layout, MemorySettings, memory_per_gpu, model_states_bytes
from autarky.plan.shape import from_params, from_preset


@pytest.mark.parametrize("zero,published_gb,tol", [(0, 120, 0.05), (1, 31.4, 0.05), (2, 16.6, 0.05),
                                                   (3, 1.9, 0.05)])
def test_zero_paper_example(zero, published_gb, tol):
    """Rajbhandari et al.: Ψ = 7.5B, N_d = 64 → 120 / 31.4 / 16.6 / 1.9 GB (±0.05 GB, the paper's rounding)."""
    assert sum(model_states_bytes(7.5e9, 64, zero)) / GB == pytest.approx(published_gb, abs=tol)


def test_llama3_405b_published_layout_needs_78_6_gb():
    """TP8/PP16/DP128, FSDP over optimizer and gradients (ZeRO-2), no recompute, FlashAttention:
    weights 6.34 + states 0.35 + activations 71.9 = 78.6 GB per H100 (±0.1 GB)."""
    mem = memory_per_gpu(from_preset("405b"), Layout(tp=8, pp=16, dp=128),
                         MemorySettings(zero=2, recompute="none", flash_attention=True), capacity_gb=80)
    assert mem.weights == pytest.approx(6.34, abs=0.01)
    assert mem.gradients + mem.optimizer == pytest.approx(0.35, abs=0.01)
    assert mem.activations == pytest.approx(71.9, abs=0.1)
    assert mem.total == pytest.approx(78.6, abs=0.1)
    assert mem.fits


def test_llama3_405b_without_flash_attention_needs_748_gb_of_activations():
    mem = memory_per_gpu(from_preset("405b"), Layout(tp=8, pp=16, dp=128),
                         MemorySettings(zero=2, recompute="none", flash_attention=False), capacity_gb=80)
    assert mem.activations == pytest.approx(748, rel=0.01)  # "about 748 GB", ±1%
    assert not mem.fits


def test_gpt3_layer_activations_without_parallelism():
    """One GPT-3 175B layer, s=2048, b=1, no parallelism, no recompute: 2.87 GB (5as/h = 80)."""
    gpt3 = from_params(175e9, layers=96, hidden=12288, heads=96, seq_len=2048)
    mem = memory_per_gpu(gpt3, Layout(), MemorySettings(recompute="none", flash_attention=False), capacity_gb=80)
    assert mem.activations / 96 == pytest.approx(2.87, abs=0.01)
    selective = memory_per_gpu(gpt3, Layout(), MemorySettings(recompute="selective"), capacity_gb=80)
    assert selective.activations / mem.activations == pytest.approx(34 / 114, rel=1e-9)  # "only 34 of 114 survive"


def test_find_layout_ranks_fitting_layouts_first_and_keeps_tp_in_a_node():
    shape = from_preset("405b")
    ranked = find_layouts(shape, 16_384, MemorySettings(), capacity_gb=80, limit=50)
    assert ranked and all(c.memory.fits for c in ranked[:10])
    assert all(c.layout.tp <= 8 and c.layout.gpus == 16_384 for c in ranked)
    fitting = [c for c in ranked if c.memory.fits]
    assert [c.layout.pp for c in fitting] == sorted(c.layout.pp for c in fitting)


def test_find_layout_on_too_few_gpus_reports_nothing_fits():
    ranked = find_layouts(from_preset("405b"), 8, MemorySettings(), capacity_gb=80)
    assert ranked and not any(c.memory.fits for c in ranked)  # 405B × 16 B/param cannot fit in 640 GB


def test_expert_parallelism_divides_expert_memory():
    moe = from_params(671e9, active_params=37e9, experts=256, active_experts=8, layers=61, hidden=7168,
                      heads=128, seq_len=4096)
    settings = MemorySettings(zero=1)
    one = memory_per_gpu(moe, Layout(pp=16, dp=128, ep=1), settings, 80)
    sixty_four = memory_per_gpu(moe, Layout(pp=16, dp=128, ep=64), settings, 80)
    dense_part = (moe.params - moe.expert_params) / 16 * 2 / GB
    assert one.weights - dense_part == pytest.approx(64 * (sixty_four.weights - dense_part), rel=1e-9)
