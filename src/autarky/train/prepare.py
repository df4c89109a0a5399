"""Resolve and validate a run before anything is written: data, model shape, batch layout, memory, resume.

Every problem a user can cause is reported here as one UserError line, so a bad command leaves no run dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autarky.contracts.rundir import CONFIG_FILE, Checkpoint, complete_checkpoints
from autarky.data import open_tokens, verify_data_dir, vocab_size_of
from autarky.errors import UserError
from autarky.model.config import ModelConfig, parameter_count
from autarky.train.config import ModelSection, TrainConfig, load_config
from autarky.train.parallelize import Topology, check_model_fits_ep, check_model_fits_tp, topology_from_env

_GB = 1e9


@dataclass(frozen=True)
class RunPlan:
    cfg: TrainConfig  # resolved: model section pinned to the exact shape, paths absolute
    model_cfg: ModelConfig
    topo: Topology
    run_dir: Path
    data_dir: Path
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    resume_from: Checkpoint | None


def prepare(cfg: TrainConfig) -> RunPlan:
    if cfg.run.out is None:
        raise UserError("no run dir given; pass --out RUN_DIR")
    if cfg.data.dir is None:
        raise UserError("no data dir given; pass --data DIR (build one with `autarky data build`)")
    run_dir, data_dir = cfg.run.out.resolve(), cfg.data.dir.resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a directory")

    verify_data_dir(data_dir)  # missing / truncated / altered files → UserError naming the file
    seq_len = cfg.data.seq_len
    model_cfg = cfg.model.resolve(vocab_size_of(data_dir), seq_len)
    topo = topology_from_env(cfg.parallel.tp, cfg.run.device, cfg.parallel.ep)
    check_model_fits_tp(model_cfg, topo.tp, topo.ep)
    check_model_fits_ep(model_cfg, cfg.model.preset, topo.ep)
    _check_batch_layout(cfg, topo)

    train_tokens = open_tokens(data_dir, "train", verify=False)  # hashed just above
    val_tokens = open_tokens(data_dir, "val", verify=False)
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        if len(tokens) <= seq_len:
            raise UserError(
                f"the {split} split of {data_dir} has {len(tokens):,} tokens, too few for --seq-len {seq_len}; "
                "lower --seq-len or build more data"
            )
    _check_memory(model_cfg, cfg, topo)
    resume_from = _check_run_dir(run_dir, cfg, model_cfg)

    resolved = cfg.model_copy(deep=True)
    resolved.model = ModelSection.pinned(cfg.model.preset, model_cfg)
    resolved.run.out, resolved.data.dir = run_dir, data_dir
    return RunPlan(resolved, model_cfg, topo, run_dir, data_dir, train_tokens, val_tokens, resume_from)


def _check_batch_layout(cfg: TrainConfig, topo: Topology) -> None:
    per_step = cfg.data.grad_accum * topo.dp_size
    if cfg.data.batch_size % per_step:
        raise UserError(
            f"--batch-size {cfg.data.batch_size} (global) is not divisible by grad_accum {cfg.data.grad_accum} × "
            f"data-parallel ranks {topo.dp_size}; use a multiple of {per_step}"
        )


def estimate_memory_bytes(model_cfg: ModelConfig, cfg: TrainConfig, topo: Topology, bf16: bool) -> float:
    """Rough peak bytes per device: fp32 weights+grads+AdamW (16 B/param, sharded) plus one micro-batch's
    activations (a per-layer count of saved (B,T,·) tensors, fp32 logits and their gradient)."""
    params = parameter_count(model_cfg)
    state = 16 * params / topo.world
    b = cfg.data.batch_size // (cfg.data.grad_accum * topo.dp_size)
    t, d, f = cfg.data.seq_len, model_cfg.dim, model_cfg.ffn_dim
    act_bytes = 2 if bf16 else 4
    per_layer = b * t * (10 * d + 4 * f // topo.tp) * act_bytes  # SDPA is flash-style: no (T, T) scores kept
    logits = 3 * b * t * model_cfg.vocab_size * 4
    return state + model_cfg.n_layers * per_layer + logits


def _device_memory_bytes(topo: Topology) -> float:
    if topo.device.type == "cuda":
        return float(torch.cuda.get_device_properties(topo.device).total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / max(1, topo.local_world)  # the ranks on this node share its RAM


def _check_memory(model_cfg: ModelConfig, cfg: TrainConfig, topo: Topology) -> None:
    bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and topo.device.type == "cuda")
    need = estimate_memory_bytes(model_cfg, cfg, topo, bf16)
    have = _device_memory_bytes(topo)
    if need > 0.9 * have:
        raise UserError(
            f"this run needs about {need / _GB:.1f} GB per device but {topo.device.type} has {have / _GB:.1f} GB; "
            "lower --batch-size or --seq-len, raise --grad-accum, or use more ranks"
        )


def _check_run_dir(run_dir: Path, cfg: TrainConfig, model_cfg: ModelConfig) -> Checkpoint | None:
    """The checkpoint to resume from (if any), refusing to overwrite an existing run."""
    ckpts = complete_checkpoints(run_dir)
    saved = run_dir / CONFIG_FILE
    if cfg.checkpoint.resume == "never":
        if ckpts or saved.exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume auto to continue it, or pick a new --out")
        return None
    if not ckpts:
        return None
    if saved.exists():
        before = load_config(saved).model
        if before.vocab_size != model_cfg.vocab_size:
            raise UserError(
                f"{run_dir} was trained with vocab_size {before.vocab_size} but the data has {model_cfg.vocab_size}; "
                "resume with the run's own data dir"
            )
        now = ModelSection.pinned(before.preset, model_cfg)
        if before != now:
            raise UserError(f"{run_dir} was trained with a different model shape; use the same --preset and data")
    return ckpts[-1]
