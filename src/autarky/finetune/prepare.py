"""Resolve and check a fine-tuning run before anything is written: base, records, rendering, rows, resume.

Every problem a user can cause is a UserError here, so a refused run leaves no run dir. The plan carries what
the trainer needs (the resolved config, the base's HF folder and shape, the rows) and the run's manifest: the
base model's weight hashes and every record's sha256 and source file, so a fine-tune is traceable to its data.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from autarky.adapters import LoraConfig
from autarky.contracts.rundir import CONFIG_FILE, Checkpoint, complete_checkpoints
from autarky.data.manifest import sha256_file
from autarky.errors import UserError
from autarky.export.source import resolve_model_source
from autarky.finetune.config import FinetuneConfig
from autarky.finetune.packing import Rows, fit_to_length, pack_rows
from autarky.finetune.records import Record, data_files, read_records
from autarky.finetune.render import Example, Renderer
from autarky.model.config import ModelConfig
from autarky.model.hf import read_model_config
from autarky.train.parallelize import Topology, topology_from_env

MANIFEST_FILE = "manifest.json"
DEFAULT_SEQ_LEN = 512
FORMAT = "autarky-finetune/1"


@dataclass(frozen=True)
class FinetunePlan:
    cfg: FinetuneConfig  # resolved: steps pinned, paths absolute
    model_cfg: ModelConfig
    topo: Topology
    run_dir: Path
    base_folder: Path  # the base as an HF folder (tokenizer, template, weights)
    train_rows: Rows
    val_rows: Rows
    manifest: dict[str, Any]
    resume_from: Checkpoint | None

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["examples"]


def prepare(cfg: FinetuneConfig) -> FinetunePlan:
    if cfg.run.out is None:
        raise UserError("no run dir given; pass --out RUN_DIR")
    if cfg.model.base is None:
        raise UserError("no base model given; pass --base (an HF folder, a .gguf file, a run dir or smollm2)")
    if cfg.data.path is None:
        raise UserError("no training data given; pass --data FILE.jsonl or a folder of .jsonl files")
    run_dir, data_path = cfg.run.out.resolve(), cfg.data.path.resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a directory")
    if cfg.model.method != "full":
        try:
            LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=cfg.lora.targets)
        except ValidationError as bad:
            raise UserError(f"bad LoRA settings: {bad.errors()[0]['msg']}") from None
    topo = topology_from_env(cfg.parallel.tp, cfg.run.device)
    if cfg.model.method != "full" and topo.tp > 1:
        raise UserError(f"--tp {topo.tp} is for full fine-tuning; LoRA runs shard with FSDP only (tp = 1)")
    per_step = cfg.data.grad_accum * topo.dp_size
    if cfg.data.batch_size % per_step:
        raise UserError(f"--batch-size {cfg.data.batch_size} (global) is not divisible by grad_accum "
                        f"{cfg.data.grad_accum} × data-parallel ranks {topo.dp_size}; use a multiple of {per_step}")

    records = read_records(data_path)
    base_folder = resolve_model_source(cfg.model.base)
    model_cfg = read_model_config(base_folder)
    cfg = cfg.model_copy(deep=True)
    cfg.data.seq_len = cfg.data.seq_len or min(DEFAULT_SEQ_LEN, model_cfg.max_seq_len)
    if cfg.data.seq_len > model_cfg.max_seq_len:
        raise UserError(f"--seq-len {cfg.data.seq_len} is beyond the base's context of {model_cfg.max_seq_len}")
    renderer = Renderer(base_folder)
    examples = [renderer.encode(r) for r in records]
    for ex in examples:
        if not any(ex.trained[1:]):
            raise UserError(f"{ex.record.where}: no assistant token is left to train on")
    train_ex, val_ex = _split(examples, cfg.data.val_fraction, cfg.run.seed)
    d, seq_len = cfg.data, cfg.data.seq_len
    train_fit, val_fit = (fit_to_length(e, seq_len, d.truncation) for e in (train_ex, val_ex))
    if not train_fit.examples:
        raise UserError("no training example is left after data.truncation; raise seq_len")
    pad = min(renderer.end_ids)  # any id: padding is never attended to from real tokens, and never trained
    train_rows = pack_rows(train_fit.examples, seq_len, d.packing, pad)
    val_rows = pack_rows(val_fit.examples, seq_len, d.packing, pad)

    resolved = cfg.model_copy(deep=True)
    resolved.run.steps = cfg.run.steps or max(1, math.ceil(cfg.run.epochs * len(train_rows) / d.batch_size))
    resolved.run.out, resolved.data.path = run_dir, data_path
    if Path(cfg.model.base).expanduser().exists():
        resolved.model.base = str(Path(cfg.model.base).expanduser().resolve())
    counts = {"records": len(records), "train": len(train_fit.examples), "val": len(val_fit.examples),
              "truncated": train_fit.truncated + val_fit.truncated, "dropped": train_fit.dropped + val_fit.dropped,
              "train_rows": len(train_rows), "val_rows": len(val_rows),
              "train_trained_tokens": train_rows.trained_tokens}  # fmt: skip
    manifest = build_manifest(resolved, base_folder, data_path, records, {id(e.record) for e in val_ex}, counts)
    resume_from = _check_run_dir(run_dir, resolved, manifest)
    return FinetunePlan(resolved, model_cfg, topo, run_dir, base_folder, train_rows, val_rows, manifest, resume_from)


def _split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Held-out records, chosen by a seeded permutation (whole conversations, never parts of one)."""
    n = len(examples)
    n_val = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    held = set(np.random.default_rng([seed, 0x5EED]).permutation(n)[:n_val].tolist())
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def weights_digest(folder: Path) -> dict[str, Any]:
    """sha256 of each weight file of an HF folder, and one digest over them all (the base's identity)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix == ".safetensors")
    hashes = {p.name: sha256_file(p) for p in files}
    combined = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in hashes.items()).encode()).hexdigest()
    return {"files": hashes, "sha256": combined}


def build_manifest(cfg: FinetuneConfig, base_folder: Path, data_path: Path, records: list[Record],
                   val_ids: set[int], counts: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    root = data_path if data_path.is_dir() else data_path.parent
    files = [{"path": str(f.relative_to(root)), "sha256": sha256_file(f), "bytes": f.stat().st_size}
             for f in data_files(data_path)]  # fmt: skip
    rows = [{"source": str(r.source.relative_to(root)), "line": r.line, "sha256": r.sha256,
             "split": "val" if id(r) in val_ids else "train"} for r in records]  # fmt: skip
    return {
        "format": FORMAT,
        "base": {"spec": cfg.model.base, "folder": str(base_folder), **weights_digest(base_folder)},
        "method": cfg.model.method,
        "data": {"path": str(data_path), "files": files, "records": rows},
        "examples": counts,
    }


def _check_run_dir(run_dir: Path, cfg: FinetuneConfig, manifest: dict[str, Any]) -> Checkpoint | None:
    ckpts = complete_checkpoints(run_dir)
    if cfg.checkpoint.resume == "never":
        if ckpts or (run_dir / CONFIG_FILE).exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume auto to continue it, or pick a new --out")
        return None
    if not ckpts:
        return None
    saved_path = run_dir / MANIFEST_FILE
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    for key, what in (("base", "base model"), ("data", "training data"), ("method", "method")):
        before, now = saved.get(key), manifest[key]
        if key == "base" and isinstance(before, dict):
            before, now = before.get("sha256"), now["sha256"]
        if before != now:
            raise UserError(f"{run_dir} was fine-tuned with a different {what}; resume with the same one, or "
                            "pick a new --out")
    return ckpts[-1]
