"""Checkpoint intervals and failure rates against Daly (2006), the §4.4 table and Kokolis et al. (planner.md §1.7, §4)."""

import pytest

from autarky.plan.reliability import (
    LLAMA3_MTBF_GPU_HOURS,
    RSC1_MTBF_GPU_HOURS,
    daly_interval,
    plan_reliability,
    young_interval,
)


@pytest.mark.parametrize("mtbf_min,published", [(24 * 60, 117), (6 * 60, 57), (15, 9.1)])
def test_daly_worked_examples(mtbf_min, published):
    """Daly's examples with δ = 5 min: the higher-order form reproduces all three (±0.5 min; ±0.1 for 9.1);
    the simple √(2δM) − δ would give 115 and 55 min."""
    assert daly_interval(5, mtbf_min) == pytest.approx(published, abs=0.1 if published < 10 else 0.5)


def test_daly_falls_back_to_mtbf_when_checkpoints_are_slow():
    assert daly_interval(40, 15) == 15


def test_per_gpu_rates_from_the_papers():
    """54 days × 24 × 16,384 / 419 ≈ 50,700 GPU-h; RSC-1 6.50 per 1,000 node-days ≈ 29,500 GPU-h (±0.5%)."""
    assert LLAMA3_MTBF_GPU_HOURS == pytest.approx(50_700, rel=0.005)
    assert RSC1_MTBF_GPU_HOURS == pytest.approx(29_500, rel=0.005)


@pytest.mark.parametrize("gpus,mtbf,job_h,young,daly", [
    (1024, LLAMA3_MTBF_GPU_HOURS, 49.5, 77, 76),
    (15_000, LLAMA3_MTBF_GPU_HOURS, 3.4, 20, 19.5),
    (16_384, LLAMA3_MTBF_GPU_HOURS, 3.1, 19.3, 18.6),
    (32_000, LLAMA3_MTBF_GPU_HOURS, 1.6, 13.8, 13.1),
    (100_000, LLAMA3_MTBF_GPU_HOURS, 0.5, 7.8, 7.1),
    (16_384, RSC1_MTBF_GPU_HOURS, 1.8, 14.7, 14.0),
    (150_000, RSC1_MTBF_GPU_HOURS, 0.2, 4.9, 4.2),
])
def test_checkpoint_interval_table(gpus, mtbf, job_h, young, daly):
    """planner.md §4.4 (δ = 1 min). The table rounds: job MTBF ±0.05 h, intervals ±0.5 min above 60, else ±0.15."""
    rel = plan_reliability(gpus, mtbf, "test", checkpoint_write_min=1.0, restart_min=2.0)
    tol = 0.5 if young > 60 else 0.15
    assert rel.job_mtbf_hours == pytest.approx(job_h, abs=0.05)
    assert rel.young_min == pytest.approx(young, abs=tol)
    assert rel.daly_min == pytest.approx(daly, abs=tol)
    assert young_interval(1.0, rel.job_mtbf_hours * 60) == pytest.approx(rel.young_min)


@pytest.mark.parametrize("gpus,published_h", [(16_384, 1.8), (131_072, 0.23)])
def test_kokolis_projected_mttf(gpus, published_h):
    """MTTF = (N_nodes · r_f)⁻¹ with RSC-1's r_f: 1.8 h at 16,384 GPUs, 0.23 h at 131,072 (±3%)."""
    assert plan_reliability(gpus, RSC1_MTBF_GPU_HOURS, "rsc1", 1.0, 2.0).job_mtbf_hours == pytest.approx(
        published_h, rel=0.03)


def test_goodput_falls_with_cluster_size_and_rises_with_faster_checkpoints():
    small = plan_reliability(1024, LLAMA3_MTBF_GPU_HOURS, "x", 1.0, 10.0).goodput
    large = plan_reliability(100_000, LLAMA3_MTBF_GPU_HOURS, "x", 1.0, 10.0).goodput
    fast = plan_reliability(100_000, LLAMA3_MTBF_GPU_HOURS, "x", 0.05, 2.0).goodput
    assert small > large and fast > large
