"""The planner's API: `plan(PlanRequest) -> PlanResult`, and `PlanResult.to_json()` for programs.

JSON keys (stable; units in the names or below):
  model{name, params, active_params, layers, hidden, heads, kv_heads, seq_len, experts, active_experts,
        shape_source}
  hardware{name, precision, peak_tflops, hbm_gb, gpus_per_node, source} — `precision` is the peak MFU divides by
  gpus, tokens, tokens_rule, predicted_loss{value, label} | null
  total_flops (under flops_rule), flops_6nd, flops_with_attention, flops_rule{name: 6nd|6nd+attn|8nd|autarky, why}
  mfu (fraction), mfu_source
  gpu_hours (incl. goodput), gpu_hours_compute (pure compute), days, days_compute, goodput, goodput_source
  layout{tp, pp, cp, dp, ep, label, zero, recompute, micro_batch, flash_attention}
  memory_per_gpu_gb (total for the layout), memory_breakdown_gb{weights, gradients, optimizer, gathered,
        activations, logits, total, capacity, reserve, fits}
  layouts[] (with --find-layout: {label, tp, pp, cp, dp, ep, zero, recompute, trainer_ready, memory_gb{...}})
  power_mw{gpu, server, facility} (nameplate), pue, network_share
  energy_mwh (facility, at `power_load` × nameplate), energy_mwh_tiers{gpu, server, facility}, power_load
  usd (total), usd_breakdown{gpu_time, electricity}, usd_per_gpu_hour, usd_per_kwh
  interruptions, job_mtbf_hours, mtbf_gpu_hours, mtbf_source
  checkpoint_interval_min (Daly), checkpoint_interval_young_min, checkpoint_write_min, restart_min
  tokens_per_step, step_time_s, steps, checkpoint_every_steps
  notes[]
Power/energy values are null for parts without a power figure (TPU v4, V100 server).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from autarky.contracts.rundir import pinned_model_config
from autarky.errors import UserError
from autarky.plan import compute, hardware, layouts, mfu, power, reliability, shape
from autarky.plan.memory import OPTIMIZER_BYTES, Layout, MemorySettings, memory_per_gpu


class PlanRequest(BaseModel):
    """Everything `autarky plan` accepts; defaults live here, the CLI only forwards."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = None
    hf_config: Path | None = None
    params: float | None = None
    active_params: float | None = None
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    ffn: int | None = None
    vocab: int | None = None
    seq_len: int | None = None
    experts: int = 1
    active_experts: int = 1
    tokens: float | None = None
    compute_optimal: bool = False
    predict_loss: bool = False
    gpu: str | None = None
    hardware_file: Path | None = None
    precision: hardware.Precision = "bf16"
    gpus: int | None = None
    days: float | None = None
    mfu: float | None = None
    tflops_per_gpu: float | None = None
    mfu_from: Path | None = None
    flops_rule: Literal["auto", "6nd", "6nd+attn", "8nd", "autarky"] = "auto"
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    dp: int | None = None
    zero: int = 1
    recompute: Literal["none", "selective", "full"] = "selective"
    micro_batch: int | None = None  # default: the measured run's batch size, else 1
    flash_attention: bool = True
    optimizer: Literal["adamw", "adamw8bit", "sgd"] = "adamw"
    reserve_gb: float = 1.0
    find_layout: bool = False
    pue: float = power.DEFAULT_PUE
    network_share: float = power.DEFAULT_NETWORK_SHARE
    power_load: float = power.DEFAULT_LOAD
    usd_per_gpu_hour: float = 2.0
    usd_per_kwh: float = 0.0
    failure_source: Literal["llama3", "rsc1", "rsc2"] = "llama3"
    mtbf_gpu_hours: float | None = None
    ckpt_write_min: float = 1.0
    restart_min: float = 10.0
    goodput: float | None = None


class PlanResult(BaseModel):
    """One plan; `to_json()` gives the documented keys (see the module docstring)."""

    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.data, indent=indent)


def _check_request(req: PlanRequest) -> None:
    sources = [n for n, v in [("--preset", req.preset), ("--hf-config", req.hf_config), ("--params", req.params)] if v]
    if len(sources) > 1:
        raise UserError(f"give one model source, not {' and '.join(sources)}")
    if req.tokens is not None and req.compute_optimal:
        raise UserError("--tokens and --compute-optimal both set the token count; give one")
    if req.gpus is not None and req.days is not None:
        raise UserError("--gpus and --days both pin the answer; give --gpus to get days, or --days to get GPUs")
    given = [n for n, v in [("--mfu", req.mfu), ("--tflops-per-gpu", req.tflops_per_gpu),
                            ("--mfu-from", req.mfu_from)] if v is not None]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} each set the utilisation; give one")
    for name, value in [("tokens", req.tokens), ("gpus", req.gpus), ("days", req.days),
                        ("tflops-per-gpu", req.tflops_per_gpu), ("micro-batch", req.micro_batch),
                        ("pue", req.pue), ("power-load", req.power_load), ("experts", req.experts),
                        ("active-experts", req.active_experts)]:
        if value is not None and not value > 0:
            raise UserError(f"--{name} must be positive, got {value}")
    for name, value in [("usd-per-gpu-hour", req.usd_per_gpu_hour), ("usd-per-kwh", req.usd_per_kwh),
                        ("reserve-gb", req.reserve_gb), ("network-share", req.network_share)]:
        if value < 0:
            raise UserError(f"--{name} must not be negative, got {value}")
    if req.zero not in (0, 1, 2, 3):
        raise UserError(f"--zero must be 0, 1, 2 or 3 (3 = FSDP), got {req.zero}")
    if req.mfu is not None:
        mfu.check_mfu(req.mfu)


def _model(req: PlanRequest, run: mfu.MeasuredRun | None) -> shape.ModelShape:
    seq_len = req.seq_len or (run.seq_len if run else None)
    if req.hf_config:
        return shape.from_hf_config(req.hf_config, seq_len)
    if req.params is not None:
        return shape.from_params(req.params, req.active_params, req.layers, req.hidden, req.heads, req.kv_heads,
                                 req.head_dim, req.ffn, req.vocab, seq_len, req.experts, req.active_experts)
    name = req.preset or (run.preset if run else None)
    if not name:
        raise UserError("give a model: --preset NAME, --hf-config PATH or --params N")
    if run is not None and not req.preset:
        try:
            cfg = pinned_model_config(run.model)
        except ValueError as exc:
            raise UserError(f"--mfu-from {run.run_dir}: the [model] table of config.toml is not a shape: {exc}") from None
        if cfg is not None:
            return shape.from_config(name, cfg, req.experts, req.active_experts, seq_len=seq_len)
    return shape.from_preset(name, seq_len, req.experts, req.active_experts)


def _accelerator(req: PlanRequest, run: mfu.MeasuredRun | None) -> hardware.Accelerator:
    extra = hardware.load_hardware_file(req.hardware_file) if req.hardware_file else {}
    name = req.gpu or ("local" if run and run.on_cpu else "h100")
    if name.lower() == "local" and "local" not in extra:
        if run is None:
            raise UserError("--gpu local plans on this machine and needs --mfu-from RUN_DIR for its measured peak")
        return hardware.local_accelerator(run.peak_flops, run.device)
    return hardware.find_accelerator(name, extra)


def _flops_rule(req: PlanRequest, run: mfu.MeasuredRun | None) -> tuple[compute.FlopsRule, str]:
    if req.flops_rule != "auto":
        return req.flops_rule, "given (--flops-rule)"
    if run is not None:
        return "autarky", "the measured MFU's own numerator: 6·N (no embedding lookup) + 12·L·H·Q·T per token"
    return "6nd", "default: C = 6·N·D, as published GPU-hour tables count"


def _gpus_for_days(req: PlanRequest, gpu_hours_compute: float, step: int, mtbf: float, source: str) -> int:
    gpus, goodput = step, 1.0
    for _ in range(50):  # goodput falls as the cluster grows; iterate to a fixed point
        need = gpu_hours_compute / goodput / (req.days * 24)
        nxt = max(step, math.ceil(need / step) * step)
        goodput = reliability.plan_reliability(nxt, mtbf, source, req.ckpt_write_min, req.restart_min,
                                               req.goodput).goodput
        if nxt == gpus:
            break
        gpus = nxt
    return gpus


def plan(req: PlanRequest) -> PlanResult:
    _check_request(req)
    run = mfu.read_run(req.mfu_from) if req.mfu_from is not None else None
    model = _model(req, run)
    acc = _accelerator(req, run)
    peak = acc.peak_flops(req.precision)
    if run is not None:
        choice = mfu.MfuChoice(run.mfu, f"measured: median of {run.steps_used} steps in {run.run_dir} on "
                                        f"{run.device}")
    elif req.tflops_per_gpu is not None:
        choice = mfu.MfuChoice(req.tflops_per_gpu * 1e12 / peak,
                               f"given: {req.tflops_per_gpu:g} TFLOP/s per GPU achieved")
    elif req.mfu is not None:
        choice = mfu.MfuChoice(req.mfu, "given (--mfu)")
    else:
        choice = mfu.default_mfu(model.params, model.is_moe, req.precision)
    mfu.check_mfu(choice.value)

    if req.tokens is not None:
        tokens, tokens_rule = req.tokens, "given (--tokens)"
    else:
        tokens, tokens_rule = compute.compute_optimal_tokens(model.active_params), compute.TOKENS_RULE
    rule, rule_why = _flops_rule(req, run)
    comp = compute.plan_compute(model, tokens, tokens_rule, rule, peak, choice.value)

    mtbf_hours, mtbf_source = reliability.FAILURE_SOURCES[req.failure_source]
    if req.mtbf_gpu_hours is not None:
        mtbf_hours, mtbf_source = req.mtbf_gpu_hours, "given (--mtbf-gpu-hours)"
    if req.gpus is not None:
        gpus = req.gpus
    elif req.days is not None:
        step = math.lcm(req.tp * req.pp * req.cp, acc.gpus_per_node if acc.name != "local" else 1)
        gpus = _gpus_for_days(req, comp.gpu_hours_compute, step, mtbf_hours, mtbf_source)
    elif acc.name == "local":
        gpus = 1
    else:
        raise UserError("give --gpus N (to get days) or --days D (to get the GPUs needed)")

    rel = reliability.plan_reliability(gpus, mtbf_hours, mtbf_source, req.ckpt_write_min, req.restart_min,
                                       req.goodput)
    gpu_hours = comp.gpu_hours_compute / rel.goodput
    wall_hours = gpu_hours / gpus
    micro_batch = req.micro_batch or (run.micro_batch if run and run.micro_batch else 1)
    settings = MemorySettings(zero=req.zero, recompute=req.recompute, micro_batch=micro_batch,
                              flash_attention=req.flash_attention, optimizer=req.optimizer,
                              reserve_gb=req.reserve_gb)
    ranked: list[layouts.LayoutCandidate] = []
    if req.find_layout:
        ranked = layouts.find_layouts(model, gpus, settings, acc.hbm_gb, acc.gpus_per_node)
        if not ranked:
            raise UserError(f"no parallel layout of {gpus} GPUs suits this model (heads {model.heads}, "
                            f"kv heads {model.kv_heads}); try a GPU count that is a multiple of 8")
        layout, settings = ranked[0].layout, ranked[0].settings
    else:
        layout = layouts.resolve_layout(model, gpus, req.tp, req.pp, req.cp, req.ep, req.dp)
    mem = memory_per_gpu(model, layout, settings, acc.hbm_gb)

    watts = power.power_mw(acc, gpus, req.pue, req.network_share)
    energy = power.energy_mwh(watts, wall_hours, req.power_load)
    cost = power.cost_usd(gpu_hours, req.usd_per_gpu_hour, energy.facility, req.usd_per_kwh)

    tokens_per_step = layout.dp * settings.micro_batch * model.seq_len
    step_time = tokens_per_step * compute.flops_per_token_by_rule(model, rule) / (gpus * peak * choice.value)
    notes = _notes(model, acc, mem, layout, run, req)
    data: dict[str, Any] = {
        "model": {"name": model.name, "params": model.params, "active_params": model.active_params,
                  "layers": model.layers, "hidden": model.hidden, "heads": model.heads, "kv_heads": model.kv_heads,
                  "seq_len": model.seq_len, "experts": model.experts, "active_experts": model.active_experts,
                  "shape_source": model.shape_source},
        "hardware": {"name": acc.name, "precision": req.precision, "peak_tflops": peak / 1e12, "hbm_gb": acc.hbm_gb,
                     "gpus_per_node": acc.gpus_per_node, "source": acc.source},
        "gpus": gpus, "tokens": tokens, "tokens_rule": tokens_rule,
        "predicted_loss": ({"value": compute.chinchilla_loss(model.params, tokens), "label": compute.CHINCHILLA_LABEL}
                           if req.predict_loss else None),
        "total_flops": comp.total_flops, "flops_6nd": comp.flops_6nd,
        "flops_with_attention": comp.flops_with_attention, "flops_rule": {"name": rule, "why": rule_why},
        "mfu": choice.value, "mfu_source": choice.source,
        "gpu_hours": gpu_hours, "gpu_hours_compute": comp.gpu_hours_compute,
        "days": wall_hours / 24, "days_compute": comp.gpu_hours_compute / gpus / 24,
        "goodput": rel.goodput, "goodput_source": rel.goodput_source,
        "layout": {"tp": layout.tp, "pp": layout.pp, "cp": layout.cp, "dp": layout.dp, "ep": layout.ep,
                   "label": layout.label(), "zero": settings.zero, "recompute": settings.recompute,
                   "micro_batch": settings.micro_batch, "flash_attention": settings.flash_attention},
        "memory_per_gpu_gb": mem.total, "memory_breakdown_gb": mem.to_dict(),
        "layouts": [_candidate_dict(c) for c in ranked],
        "power_mw": watts.to_dict(), "pue": req.pue, "network_share": req.network_share,
        "energy_mwh": energy.facility, "energy_mwh_tiers": energy.to_dict(), "power_load": req.power_load,
        "usd": cost.total, "usd_breakdown": {"gpu_time": cost.gpu_time, "electricity": cost.electricity},
        "usd_per_gpu_hour": req.usd_per_gpu_hour, "usd_per_kwh": req.usd_per_kwh,
        "interruptions": rel.interruptions(wall_hours), "job_mtbf_hours": rel.job_mtbf_hours,
        "mtbf_gpu_hours": rel.mtbf_gpu_hours, "mtbf_source": rel.mtbf_source,
        "checkpoint_interval_min": rel.daly_min, "checkpoint_interval_young_min": rel.young_min,
        "checkpoint_write_min": rel.checkpoint_write_min, "restart_min": rel.restart_min,
        "tokens_per_step": tokens_per_step, "step_time_s": step_time, "steps": math.ceil(tokens / tokens_per_step),
        "checkpoint_every_steps": max(1, round(rel.daly_min * 60 / step_time)),
        "notes": notes,
    }
    return PlanResult(data=data)


def _candidate_dict(c: layouts.LayoutCandidate) -> dict[str, Any]:
    return {"label": c.layout.label(), "tp": c.layout.tp, "pp": c.layout.pp, "cp": c.layout.cp, "dp": c.layout.dp,
            "ep": c.layout.ep, "zero": c.settings.zero, "recompute": c.settings.recompute,
            "trainer_ready": c.trainer_ready, "memory_gb": c.memory.to_dict()}


def _notes(model: shape.ModelShape, acc: hardware.Accelerator, mem: Any, layout: Layout,
           run: mfu.MeasuredRun | None, req: PlanRequest) -> list[str]:
    notes = []
    if model.shape_source != "exact" and model.shape_source != "given":
        notes.append(f"shape {model.shape_source}")
    if not mem.fits:
        notes.append(f"{layout.label()} needs {mem.total:.1f} GB + {mem.reserve:g} GB reserve per GPU but "
                     f"{acc.name} has {acc.hbm_gb:g} GB: try --find-layout, --recompute full or more TP/PP")
    if run is not None and run.on_cpu and acc.name != "local":
        notes.append(f"MFU measured on {run.device} applied to {acc.name}: a lower bound at best")
    if req.optimizer != "adamw":
        notes.append(f"optimizer {req.optimizer}: {OPTIMIZER_BYTES[req.optimizer]:g} bytes/param of state")
    return notes
