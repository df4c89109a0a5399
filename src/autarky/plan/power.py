"""Power at three tiers, energy and cost (planner.md §1.6, §2.2, §5).

- gpu:      GPUs × TDP (nameplate). The seed claim "32,000 H100 draw over 20 MW" is this tier: 22.4 MW.
- server:   GPUs × server max power per GPU (DGX max / 8: 1,275 W for H100), i.e. CPUs, NICs, fans, PSU losses.
- facility: server × (1 + network/storage share, default 10% per SemiAnalysis) × PUE (default 1.2, a new AI hall;
            1.56 is the industry average per Uptime Institute).
Energy uses the average draw while training, `load` × nameplate (default 0.9: ~620–650 W measured per 700 W
H100, Ai2 Olmo 3), over the wall-clock hours of the run. Cost = GPU-hours × $/GPU-hour + facility energy × $/kWh
(leave $/kWh at 0 when the hourly price already includes power, as rentals do).
"""

from __future__ import annotations

from dataclasses import dataclass

from autarky.plan.hardware import Accelerator

DEFAULT_PUE = 1.2
DEFAULT_NETWORK_SHARE = 0.10
DEFAULT_LOAD = 0.9


@dataclass(frozen=True)
class PowerTiers:
    gpu: float | None
    server: float | None
    facility: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"gpu": self.gpu, "server": self.server, "facility": self.facility}


def power_mw(acc: Accelerator, gpus: int, pue: float = DEFAULT_PUE,
             network_share: float = DEFAULT_NETWORK_SHARE) -> PowerTiers:
    """Nameplate megawatts at each tier; None where the catalog has no figure for this part."""
    gpu = gpus * acc.tdp_w / 1e6 if acc.tdp_w else None
    server = gpus * acc.server_w_per_gpu / 1e6 if acc.server_w_per_gpu else None
    facility = server * (1 + network_share) * pue if server is not None else None
    return PowerTiers(gpu=gpu, server=server, facility=facility)


def energy_mwh(power: PowerTiers, wall_hours: float, load: float = DEFAULT_LOAD) -> PowerTiers:
    def scale(mw: float | None) -> float | None:
        return mw * load * wall_hours if mw is not None else None

    return PowerTiers(gpu=scale(power.gpu), server=scale(power.server), facility=scale(power.facility))


@dataclass(frozen=True)
class Cost:
    gpu_time: float
    electricity: float

    @property
    def total(self) -> float:
        return self.gpu_time + self.electricity


def cost_usd(gpu_hours: float, usd_per_gpu_hour: float, facility_mwh: float | None, usd_per_kwh: float) -> Cost:
    return Cost(gpu_time=gpu_hours * usd_per_gpu_hour, electricity=(facility_mwh or 0.0) * 1000 * usd_per_kwh)
