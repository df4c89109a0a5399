"""Run metrics: RUN_DIR/metrics.jsonl (one object per logged step), peak FLOPs for MFU, the loss-curve PNG.
The file layout and its readers (`read_metrics`, the steady-state rule) are `autarky.contracts.rundir`.

MFU = tokens/s × flops_per_token(cfg, seq_len) / (world × peak_flops), a fraction in [0, 1].
Peak per device: a table of dense bf16 tensor-core peaks for known CUDA GPUs (the number MFU is quoted
against by Llama 3, torchtitan and Megatron). On CPU, and on unknown GPUs, the peak is MEASURED once at
start: the best of ten 1024² fp32 (4096² bf16 on CUDA) matmuls with the process's threads. CPU MFU is therefore
"fraction of this machine's achievable matmul rate", not a datasheet number; on a machine shared with other
busy processes the measurement can land in a slow moment, and MFU can then read above 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from autarky.contracts.rundir import METRICS_FILE, PLOT_FILE, read_metrics

__all__ = ["CUDA_BF16_PEAK", "MetricsLog", "measure_matmul_peak", "peak_flops", "plot_losses", "read_metrics"]

# Dense (no sparsity) bf16 tensor-core peak FLOP/s per GPU, from the vendors' datasheets.
CUDA_BF16_PEAK: dict[str, float] = {
    "GB200": 2.5e15,
    "B200": 2.25e15,
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12 but reports the same name prefix
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    """Best observed FLOP/s of an n×n matmul on this device."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device: torch.device) -> tuple[float, str]:
    """(peak FLOP/s per device, device description)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in CUDA_BF16_PEAK.items():
            if key in name:
                return peak, name
        # Unknown GPU: measure (a lower bound on the datasheet peak, so MFU reads high; said in the name).
        return measure_matmul_peak(device, torch.bfloat16, n=4096), f"{name} (measured peak)"
    threads = torch.get_num_threads()
    peak = measure_matmul_peak(device, torch.float32)
    return peak, f"cpu, {threads} threads (measured fp32 matmul peak)"


class MetricsLog:
    """Appends one JSON line per logged step (main rank only)."""

    def __init__(self, run_dir: Path, resume_step: int) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step and self.path.exists():
            # Lines after the checkpoint we resume from were produced by the lost attempt; drop them.
            kept = [row for row in read_metrics(run_dir) if row["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        elif not resume_step:
            self.path.write_text("")

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def plot_losses(run_dir: Path) -> Path:
    """Training and validation loss against step, as RUN_DIR/loss.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train", linewidth=1)
    val = [r for r in rows if r.get("val_loss") is not None]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / PLOT_FILE
    fig.savefig(out)
    plt.close(fig)
    return out
