"""Where the MFU comes from: a default by size and precision, the user, or a measured autarky run.

A run directory written by `autarky train` holds `metrics.jsonl`, one JSON object per logged step with at least
`step`, `mfu` (a fraction), `peak_flops` (per device, FLOP/s), `device` and `world`, plus `config.toml` whose
[model] table pins the exact shape trained and whose [data] table has seq_len and the GLOBAL batch_size. The measured MFU
is the steady state of `autarky.contracts.rundir` (the median over logged steps after the warm-up rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autarky.contracts.rundir import METRICS_FILE, read_metrics, read_run_config, steady_state
from autarky.errors import UserError


@dataclass(frozen=True)
class MfuChoice:
    value: float
    source: str


@dataclass(frozen=True)
class MeasuredRun:
    mfu: float
    peak_flops: float
    device: str
    steps_used: int
    tokens_per_s: float | None
    preset: str | None
    model: dict  # the run's [model] table: the exact shape it trained (pinned by `autarky train`)
    seq_len: int | None
    micro_batch: int | None  # sequences per rank per micro-step
    run_dir: str

    @property
    def on_cpu(self) -> bool:
        return self.device.lower().startswith("cpu")


def default_mfu(params: float, is_moe: bool, precision: str) -> MfuChoice:
    """Defaults from published runs; the one assumption is labelled as such."""
    if precision == "fp8":
        return MfuChoice(0.20, "default: Llama 4 Behemoth, 390 TFLOP/s = 20% of H100 FP8 peak")
    if is_moe:
        return MfuChoice(0.35, "default: DeepSeek-V3 implied 35% of BF16-equivalent peak (MoE)")
    if params < 1e9:
        return MfuChoice(0.25, "default: assumption for <1B models (small matmuls under-fill big GPUs)")
    return MfuChoice(0.40, "default: Llama 3.1 405B, 38-43% BF16 MFU on 8K-16K H100")


def check_mfu(value: float) -> float:
    if not 0 < value <= 1:
        raise UserError(f"MFU must be a fraction in (0, 1], got {value}; e.g. --mfu 0.4 for 40%")
    return value


def read_run(run_dir: Path) -> MeasuredRun:
    """The robust MFU of a training run: the run-dir contract's steady state (median after the warm-up rows)."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    try:
        logged = read_metrics(run_dir)
    except (OSError, UnicodeDecodeError, UserError) as exc:
        why = "FileNotFoundError" if isinstance(exc, UserError) else exc.__class__.__name__
        raise UserError(f"--mfu-from {run_dir}: cannot read {METRICS_FILE} ({why}); "
                        "point it at a run directory written by `autarky train`") from None
    rows = [r for r in logged if isinstance(r, dict) and isinstance(r.get("mfu"), int | float) and r.get("peak_flops")]
    if not rows:
        raise UserError(f"--mfu-from {metrics}: no rows with 'mfu' and 'peak_flops'; train a few more steps")
    steady = steady_state(rows)
    used, mfu = steady.rows, float(steady.mfu or 0.0)
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu-from {metrics}: median MFU {mfu} is outside (0, 1]; is 'mfu' a fraction?")
    try:
        config = read_run_config(run_dir)
    except UserError as exc:
        raise UserError(f"--mfu-from: {exc.message}") from None
    model, data, parallel = (config.get(k) if isinstance(config.get(k), dict) else {}
                             for k in ("model", "data", "parallel"))
    preset = config.get("preset") or model.get("preset")
    seq_len = config.get("seq_len") or data.get("seq_len")
    micro_batch = None
    if isinstance(data.get("batch_size"), int):  # GLOBAL sequences per step in `autarky train`
        world = int(used[-1].get("world") or 1)
        dp = max(1, world // int(parallel.get("tp") or 1))
        micro_batch = max(1, data["batch_size"] // (int(data.get("grad_accum") or 1) * dp))
    return MeasuredRun(
        mfu=mfu, peak_flops=float(used[-1]["peak_flops"]), device=str(used[-1].get("device", "unknown")),
        steps_used=len(used), tokens_per_s=steady.tokens_per_s,
        preset=str(preset) if preset else None, model=model, seq_len=int(seq_len) if seq_len else None,
        micro_batch=micro_batch, run_dir=str(run_dir))
