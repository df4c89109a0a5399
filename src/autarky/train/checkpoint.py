"""DCP checkpoints in RUN_DIR/checkpoints/step-N/, written atomically, newest K kept.

Each rank writes its shard into `step-N.tmp/`; after a barrier rank 0 adds `meta.json` and renames the folder
to `step-N/`. Only `step-N/` folders holding both `.metadata` and `meta.json` count as complete, so a
half-written checkpoint is never loaded. The folder must be on a file system all ranks share (multi-node).
DCP reshards on load, so a run may resume on a different number of ranks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from autarky.errors import UserError
from autarky.model.llama import Llama, ModelConfig
from autarky.train.parallelize import Topology, barrier

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns that it "assumes a single process" whenever no process group exists: that is our intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def complete_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first (ignores *.tmp and anything half-written)."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / ".metadata").is_file() and (path / "meta.json").is_file():
                found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found, key=lambda c: c.step)


def _rng_key(rank: int) -> str:
    return f"rng_rank{rank}"


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    topo: Topology,
    keep: int,
) -> Path:
    """Write step-N atomically on all ranks together; returns the final folder."""
    root = Path(run_dir) / CHECKPOINTS
    final, tmp = root / f"step-{step}", root / f"step-{step}.tmp"
    if topo.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crash mid-save
    barrier(topo.world)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {
        "model": model_sd,
        "optim": optim_sd,
        "train": json.dumps(train_state),  # one leaf: DCP stores it as bytes
        _rng_key(topo.rank): _rng_state(topo.device),
    }
    with _single_process_ok():
        dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp, overwrite=True))
    barrier(topo.world)
    if topo.is_main:
        _write_durably(tmp / "meta.json", json.dumps({"step": step, **meta}, indent=2))
        if final.exists():  # re-saving a step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(root)  # the rename itself survives a power cut
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
    barrier(topo.world)
    return final


def _write_durably(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(
    ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, topo: Topology
) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG in place; returns the saved train state."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd, "train": ""}
    saved_keys = dcp.FileSystemReader(ckpt.path).read_metadata().state_dict_metadata.keys()
    rng_key = _rng_key(topo.rank)
    has_rng = any(k == rng_key or k.startswith(rng_key + ".") for k in saved_keys)
    if has_rng:  # absent when resuming on more ranks than saved it
        state[rng_key] = _rng_state(topo.device)  # same shapes as the saved state
    with _single_process_ok():
        dcp.load(state, checkpoint_id=ckpt.path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if has_rng:
        torch.set_rng_state(state[rng_key]["torch"])
        if "cuda" in state[rng_key] and topo.device.type == "cuda":
            torch.cuda.set_rng_state(state[rng_key]["cuda"], topo.device)
    return json.loads(state["train"])


def read_meta(ckpt: Checkpoint) -> dict[str, Any]:
    return json.loads((ckpt.path / "meta.json").read_text())


def find_checkpoint(run_dir: Path, step: int | None = None) -> Checkpoint:
    """The newest complete checkpoint, or the one of `step`; UserError when there is none."""
    ckpts = complete_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"{run_dir} holds no complete checkpoint; train it first (autarky train --out {run_dir})")
    if step is None:
        return ckpts[-1]
    for ckpt in ckpts:
        if ckpt.step == step:
            return ckpt
    have = ", ".join(str(c.step) for c in ckpts)
    raise UserError(f"{run_dir} has no complete checkpoint for step {step}; available steps: {have}")


def load_model_from_run(run_dir: Path | str, step: int | None = None) -> tuple[Llama, ModelConfig, Path, int]:
    """A plain single-process fp32 model from a run's newest (or given) checkpoint, in eval mode.

    Returns (model, config, tokenizer_dir, step). Works without a process group, whatever world size saved it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist")
    ckpt = find_checkpoint(run_dir, step)
    meta = read_meta(ckpt)
    cfg = ModelConfig(**meta["model"])
    model = Llama(cfg)
    model_sd = model.state_dict()
    with _single_process_ok():
        dcp.load({"model": model_sd}, checkpoint_id=ckpt.path)
    model.load_state_dict(model_sd)
    model.eval()
    tokenizer_dir = run_dir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise UserError(f"{run_dir} has no tokenizer/tokenizer.json; the run dir is incomplete")
    return model, cfg, tokenizer_dir, ckpt.step
