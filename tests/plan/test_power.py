"""Power, energy and cost against the seed claims (planner.md §5)."""

import pytest

from autarky.plan.hardware import find_accelerator
from autarky.plan.planner import PlanRequest, plan
from autarky.plan.power import power_mw


def test_32000_h100_draw_over_20_mw_at_the_gpus():
    """"A hall of 32,000 H100s draws over 20 MW": GPU TDP alone is 22.4 MW (exact), server level 40.8 MW."""
    tiers = power_mw(find_accelerator("h100"), 32_000)
    assert tiers.gpu == pytest.approx(22.4, rel=1e-9) and tiers.gpu > 20
    assert tiers.server == pytest.approx(40.8, rel=1e-9)


@pytest.mark.parametrize("pue", [1.1, 1.2, 1.3, 1.56])
def test_32000_h100_facility_is_40_to_70_mw(pue):
    """§5: 40–60 MW at the meter for new halls, ~70 MW at the industry-average PUE 1.56 (±1 MW at the top)."""
    facility = power_mw(find_accelerator("h100"), 32_000, pue=pue).facility
    assert 40 <= facility <= 71


def test_15000_h100_mai_cluster():
    """MAI-1-preview on ~15,000 H100: 10.5 MW GPU TDP, ~18–23 MW IT, ~20–28 MW facility (PUE 1.1–1.3)."""
    h100 = find_accelerator("h100")
    assert power_mw(h100, 15_000).gpu == pytest.approx(10.5, rel=1e-9)
    it = power_mw(h100, 15_000, pue=1.0).facility  # server + network/storage, before PUE
    assert 18 <= it <= 23
    for pue in (1.1, 1.3):
        assert 20 <= power_mw(h100, 15_000, pue=pue).facility <= 28


def test_eight_times_16k_h100_facility_is_in_the_6_to_10x_range():
    """6–10× the 15K cluster ≈ 140–290 MW facility; 8 × 16,384 H100 must sit inside at PUE 1.2."""
    assert 140 <= power_mw(find_accelerator("h100"), 8 * 16_384).facility <= 290


def test_llama3_405b_gpu_energy_is_21_6_gwh():
    """30.84M H100-hours × 0.7 kW = 21.6 GWh of GPU-TDP energy; our plan's predicted hours at full load (±2%)."""
    d = plan(PlanRequest(preset="405b", tokens=15.6e12, gpu="h100", gpus=16_384, mfu=0.41,
                         power_load=1.0)).to_dict()
    assert d["energy_mwh_tiers"]["gpu"] == pytest.approx(21_600, rel=0.02)
    assert d["energy_mwh"] > d["energy_mwh_tiers"]["server"] > d["energy_mwh_tiers"]["gpu"]


def test_deepseek_v3_cost_at_2_usd_per_gpu_hour():
    """DeepSeek priced 2.788M H800-hours at $2 → $5.576M (exact, given the hours)."""
    mfu = 6 * 37e9 * 14.8e12 / (2.788e6 * 3600 * 989.4e12)
    d = plan(PlanRequest(params=671e9, active_params=37e9, experts=256, active_experts=8, tokens=14.8e12,
                         gpu="h800", gpus=2048, mfu=mfu, goodput=1.0, usd_per_gpu_hour=2.0)).to_dict()
    assert d["usd"] == pytest.approx(5.576e6, rel=1e-6)


def test_electricity_cost_follows_facility_energy():
    base = dict(preset="8b", tokens=1e12, gpu="h100", gpus=1024)
    d = plan(PlanRequest(**base, usd_per_gpu_hour=0, usd_per_kwh=0.078)).to_dict()
    assert d["usd"] == pytest.approx(d["energy_mwh"] * 1000 * 0.078, rel=1e-9)
