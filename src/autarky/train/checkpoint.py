"""DCP checkpoints in RUN_DIR/checkpoints/step-N/, written atomically, newest K kept.

Each rank writes its shard into `step-N.tmp/`; after a barrier rank 0 adds `meta.json` and renames the folder
to `step-N/`. Only `step-N/` folders holding both `.metadata` and `meta.json` count as complete, so a
half-written checkpoint is never loaded. The folder must be on a file system all ranks share (multi-node).
DCP reshards on load, so a run may resume on a different number of ranks or parallel layout. The optimizer
state is keyed by parameter name (DCP's flattened form), never by param-group number: the groups depend on the
layout (tensor parallelism adds some, see `build_optimizer`). The group hyper-parameters are saved but not
loaded: they come from the config. The layout and its readers (`find_checkpoint`, `load_model_from_run`, ...)
are the run-dir contract, `autarky.contracts.rundir`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from autarky.contracts.rundir import (
    CHECKPOINTS,
    META_FILE,
    Checkpoint,
    checkpoint_path,
    complete_checkpoints,
    find_checkpoint,
    load_model_from_run,
    read_meta,
    single_process_dcp,
)
from autarky.errors import UserError
from autarky.train.parallelize import Topology, barrier

# Readers of the layout are the contract's; re-exported for the train stage's callers.
__all__ = ["Checkpoint", "complete_checkpoints", "find_checkpoint", "load_checkpoint", "load_model_from_run",
           "read_meta", "save_checkpoint"]


# "state.<param>.<exp_avg|...>" as the nested form also flattens to, so checkpoints from before this form load;
# "param_groups.<param>.<lr|...>" instead of "param_groups.<group number>.<lr|...>".
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_GROUPS = "param_groups."


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
    root, final = Path(run_dir) / CHECKPOINTS, checkpoint_path(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if topo.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crash mid-save
    barrier(topo.world)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    state = {
        "model": model_sd,
        "optim": optim_sd,
        "train": json.dumps(train_state),  # one leaf: DCP stores it as bytes
        _rng_key(topo.rank): _rng_state(topo.device),
    }
    with single_process_dcp():
        dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp, overwrite=True))
    barrier(topo.world)
    if topo.is_main:
        _write_durably(tmp / META_FILE, json.dumps({"step": step, **meta}, indent=2))
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
    """Restore model, optimizer state and this rank's RNG in place; returns the saved train state. The param
    groups' hyper-parameters stay the optimizer's own (the config's)."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    groups = {k: v for k, v in optim_sd.items() if k.startswith(_GROUPS)}
    moments = {k: v for k, v in optim_sd.items() if not k.startswith(_GROUPS)}
    state: dict[str, Any] = {"model": model_sd, "optim": moments, "train": ""}
    saved_keys = dcp.FileSystemReader(ckpt.path).read_metadata().state_dict_metadata.keys()
    rng_key = _rng_key(topo.rank)
    has_rng = any(k == rng_key or k.startswith(rng_key + ".") for k in saved_keys)
    if has_rng:  # absent when resuming on more ranks than saved it
        state[rng_key] = _rng_state(topo.device)  # same shapes as the saved state
    try:
        with single_process_dcp():
            dcp.load(state, checkpoint_id=ckpt.path)
    except CheckpointException as exc:  # what DCP cannot map or reshard: names or shapes that do not match
        raise UserError(f"cannot resume from {ckpt.path}: {_first_failure(exc)}; it was saved by another model "
                        "or set of trained parameters (resume with the same model, or start a new run)") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict={**state["optim"], **groups},
                   options=_OPTIONS)  # fmt: skip
    if has_rng:
        torch.set_rng_state(state[rng_key]["torch"])
        if "cuda" in state[rng_key] and topo.device.type == "cuda":
            torch.cuda.set_rng_state(state[rng_key]["cuda"], topo.device)
    return json.loads(state["train"])


def _first_failure(exc: CheckpointException) -> str:
    """One line from DCP's per-rank failures (its message is every rank's traceback)."""
    error = next(iter(exc.failures.values()))[0]
    return (str(error).splitlines() or [type(error).__name__])[0]
