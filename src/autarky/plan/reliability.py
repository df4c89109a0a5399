"""Failures, checkpoint interval and goodput (planner.md §1.7, §4).

Per-GPU MTBF defaults to the Llama 3 405B snapshot: 419 unexpected interruptions in 54 days on 16,384 H100
(arXiv:2407.21783 §3.3.4) → 50,680 GPU-hours per interruption. Meta's RSC clusters (Kokolis et al.,
arXiv:2410.21680) give 6.50 (RSC-1) and 2.34 (RSC-2) failures per 1,000 node-days of 8 GPUs.

- job MTBF          M = MTBF_gpu / N_gpu
- Young (1974)      τ = √(2δM)
- Daly (2006)       τ = √(2δM)·[1 + ⅓·√(δ/2M) + (δ/2M)/9] − δ  for δ < 2M, else M
                    (this higher-order form gives Daly's worked example, M = 24 h, δ = 5 min → 117 min; the
                    "simple" √(2δM) − δ gives 115 min)
- wasted fraction   w = δ/τ + (τ/2 + R)/M, goodput = 1 − w, with R the restart time; τ is Daly's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autarky.errors import UserError

LLAMA3_MTBF_GPU_HOURS = 54 * 24 * 16_384 / 419
RSC1_MTBF_GPU_HOURS = 1000 * 24 * 8 / 6.50
RSC2_MTBF_GPU_HOURS = 1000 * 24 * 8 / 2.34
FAILURE_SOURCES = {
    "llama3": (LLAMA3_MTBF_GPU_HOURS, "Llama 3 405B: 419 unexpected interruptions / 54 days / 16,384 H100"),
    "rsc1": (RSC1_MTBF_GPU_HOURS, "Meta RSC-1: 6.50 failures per 1,000 node-days (arXiv:2410.21680)"),
    "rsc2": (RSC2_MTBF_GPU_HOURS, "Meta RSC-2: 2.34 failures per 1,000 node-days (arXiv:2410.21680)"),
}


def young_interval(delta: float, mtbf: float) -> float:
    return math.sqrt(2 * delta * mtbf)


def daly_interval(delta: float, mtbf: float) -> float:
    if delta >= 2 * mtbf:
        return mtbf
    x = delta / (2 * mtbf)
    return math.sqrt(2 * delta * mtbf) * (1 + math.sqrt(x) / 3 + x / 9) - delta


def wasted_fraction(delta: float, interval: float, restart: float, mtbf: float) -> float:
    return delta / interval + (interval / 2 + restart) / mtbf


@dataclass(frozen=True)
class Reliability:
    mtbf_gpu_hours: float
    mtbf_source: str
    job_mtbf_hours: float
    checkpoint_write_min: float
    restart_min: float
    young_min: float
    daly_min: float
    goodput: float
    goodput_source: str

    def interruptions(self, wall_hours: float) -> float:
        return wall_hours / self.job_mtbf_hours


def plan_reliability(gpus: int, mtbf_gpu_hours: float, mtbf_source: str, checkpoint_write_min: float,
                     restart_min: float, goodput_override: float | None = None) -> Reliability:
    if not mtbf_gpu_hours > 0:
        raise UserError(f"--mtbf-gpu-hours must be positive, got {mtbf_gpu_hours}")
    if not checkpoint_write_min > 0 or restart_min < 0:
        raise UserError("--ckpt-write-min must be positive and --restart-min non-negative")
    job_min = mtbf_gpu_hours / gpus * 60
    young = young_interval(checkpoint_write_min, job_min)
    daly = daly_interval(checkpoint_write_min, job_min)
    if goodput_override is not None:
        if not 0 < goodput_override <= 1:
            raise UserError(f"--goodput must be in (0, 1], got {goodput_override}")
        goodput, source = goodput_override, "given (--goodput)"
    else:
        waste = wasted_fraction(checkpoint_write_min, daly, restart_min, job_min)
        if waste >= 0.9:
            raise UserError(f"at {gpus} GPUs the job fails every {job_min:.1f} min: checkpoints ({checkpoint_write_min}"
                            f" min) and restarts ({restart_min} min) leave under 10% goodput; shorten them")
        goodput, source = 1 - waste, "first-order model: 1 − δ/τ − (τ/2 + R)/M at Daly's τ"
    return Reliability(
        mtbf_gpu_hours=mtbf_gpu_hours, mtbf_source=mtbf_source, job_mtbf_hours=job_min / 60,
        checkpoint_write_min=checkpoint_write_min, restart_min=restart_min, young_min=young, daly_min=daly,
        goodput=goodput, goodput_source=source)
