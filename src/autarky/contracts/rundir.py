"""The run directory: what `autarky train` writes and every later stage reads, in one place.

    RUN_DIR/config.toml               the fully resolved run config; its [model] table pins the exact shape
    RUN_DIR/metrics.jsonl             one JSON object per logged step (step, loss, tokens_per_s, mfu,
                                      peak_flops, device, world, ...; val_loss at evaluation steps)
    RUN_DIR/loss.png                  the loss curve
    RUN_DIR/tokenizer/                tokenizer.json + tokenizer_config.json, so the run dir alone can be exported
    RUN_DIR/checkpoints/step-N/       a DCP checkpoint plus meta.json ({"step", "model": ModelConfig, ...});
                                      written as step-N.tmp/ and renamed, so only complete folders count

Producer: train (checkpoint.py saves through these paths, metrics.py appends the rows). Consumers: export (load
weights, find a checkpoint), plan (`--mfu-from`: steady-state MFU and the pinned shape), demo (the run summary).
"""

from __future__ import annotations

import json
import re
import statistics
import tomllib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autarky.errors import UserError

if TYPE_CHECKING:
    from autarky.model.config import ModelConfig
    from autarky.model.llama import Llama

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS = "checkpoints"
META_FILE = "meta.json"
# Logged rows left out of the steady state: the first ones carry torch.compile, allocator and cache warm-up.
# (The trainer's own end-of-run summary times the steps themselves and leaves out the attempt's first step;
# readers of a run dir only have the logged rows, and all of them use this rule.)
WARMUP_ROWS = 3
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def is_run_dir(path: Path | str) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / CHECKPOINTS).is_dir()


def checkpoint_path(run_dir: Path | str, step: int) -> Path:
    """Where step `step`'s checkpoint lives once complete (the writer fills `<that>.tmp` first)."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def complete_checkpoints(run_dir: Path | str) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first (ignores *.tmp and anything half-written)."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / ".metadata").is_file() and (path / META_FILE).is_file():
                found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found, key=lambda c: c.step)


def find_checkpoint(run_dir: Path | str, step: int | None = None) -> Checkpoint:
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


def read_meta(ckpt: Checkpoint) -> dict[str, Any]:
    return json.loads((ckpt.path / META_FILE).read_text())


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every logged row of a run, in order (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; is {run_dir} a training run dir?")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def steady_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged rows that measure the steady state: those after the first WARMUP_ROWS (the last row alone when
    there are no more). Rows are taken in step order; this is the one warm-up rule for every reader of a run."""
    ordered = sorted(rows, key=lambda r: r.get("step", 0))
    return ordered[WARMUP_ROWS:] if len(ordered) > WARMUP_ROWS else ordered[-1:]


@dataclass(frozen=True)
class SteadyState:
    tokens_per_s: float | None  # median over the steady rows (None when no row carries it)
    mfu: float | None  # median fraction of peak over the steady rows
    rows: list[dict[str, Any]]


def steady_state(rows: list[dict[str, Any]]) -> SteadyState:
    """Median tokens/s and MFU over `steady_rows(rows)`."""
    used = steady_rows(rows)

    def median(key: str) -> float | None:
        values = [float(r[key]) for r in used if isinstance(r.get(key), int | float)]
        return statistics.median(values) if values else None

    return SteadyState(median("tokens_per_s"), median("mfu"), used)


def read_run_config(run_dir: Path | str) -> dict[str, Any]:
    """The run's config.toml as a plain tree ({} when absent: the metrics alone are still usable)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


_SHAPE_KEYS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len")


def pinned_model_config(model: dict[str, Any]) -> ModelConfig | None:
    """The exact model shape a run trained, from its config.toml's [model] table (pinned by `autarky train`);
    None when the table does not pin a whole shape. ValueError when it does but is not a valid shape."""
    from autarky.errors import UserError
    from autarky.model.config import ModelConfig
    from autarky.model.sizes import PRESETS, preset

    if not isinstance(model, dict) or not all(model.get(k) for k in _SHAPE_KEYS):
        return None
    known = {f.name: model[f.name] for f in fields(ModelConfig) if f.name in model}
    try:
        # Only the shape is pinned: the family features (head_dim, q/k norm, biases, experts) are the preset's.
        if model.get("preset") in PRESETS:
            return preset(model["preset"], **known)
        return ModelConfig(**known)
    except (TypeError, UserError) as exc:
        raise ValueError(str(exc)) from None


@contextmanager
def single_process_dcp() -> Iterator[None]:
    """DCP warns that it "assumes a single process" whenever no process group exists: that is our intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def load_model_from_run(run_dir: Path | str, step: int | None = None) -> tuple[Llama, ModelConfig, Path, int]:
    """A plain single-process fp32 model from a run's newest (or given) checkpoint, in eval mode.

    Returns (model, config, tokenizer_dir, step). Works without a process group, whatever world size saved it.
    """
    import torch.distributed.checkpoint as dcp  # paid for only by callers that load weights

    from autarky.model.config import ModelConfig
    from autarky.model.llama import Llama

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist")
    ckpt = find_checkpoint(run_dir, step)
    meta = read_meta(ckpt)
    if "lora" in meta:  # its "model" is the base's shape: loading that alone would silently drop the adapters
        raise UserError(f"{run_dir} is a LoRA fine-tune; load it with autarky.export.load_run (adapters merged)")
    cfg = ModelConfig(**meta["model"])
    model = Llama(cfg)
    model_sd = model.state_dict()
    with single_process_dcp():
        dcp.load({"model": model_sd}, checkpoint_id=ckpt.path)
    model.load_state_dict(model_sd)
    model.eval()
    tokenizer_dir = run_dir / TOKENIZER_DIR
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise UserError(f"{run_dir} has no {TOKENIZER_DIR}/tokenizer.json; the run dir is incomplete")
    return model, cfg, tokenizer_dir, ckpt.step
