"""The global half of a build: exact and near-duplicate removal across all tasks, and the tokenizer sample.

One process walks the tasks' outputs in task order (so the first copy of a document in corpus order is the one
kept, whatever the number of workers) and writes scan-NNNNN.keep: one byte per indexed document. Its memory is
O(documents): 16 bytes of sha256 per kept document in a set, the LSH tables (see autarky.data.minhash) and one
small tuple per training document for the tokenizer sample; the texts themselves are never held.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autarky.data.config import DataConfig
from autarky.data.readers import Task
from autarky.data.sources import _unit_interval
from autarky.data.tasks import task_file

_MB = 1_000_000


@dataclass
class Selection:
    exact_duplicates: int = 0
    near_duplicates: int = 0
    split_documents: Counter[str] = field(default_factory=Counter)
    sample: list[tuple[int, int]] = field(default_factory=list)  # (task, row) of the tokenizer sample, in order
    sample_bytes: int = 0


def index_rows(work: Path, index: int) -> Iterator[list]:
    with task_file(work, "scan", index, "idx.jsonl").open() as f:
        for line in f:
            yield json.loads(line)


def select_documents(cfg: DataConfig, tasks: list[Task], work: Path) -> Selection:
    """Decide which indexed documents survive global dedup; choose the tokenizer's sample among them."""
    near = None
    if cfg.dedup.near_dup:
        from autarky.data.minhash import NearDuplicates

        near = NearDuplicates(cfg.dedup)
    num_perm = cfg.dedup.bands * cfg.dedup.rows
    selection = Selection()
    seen: set[bytes] = set()
    candidates: list[tuple[float, int, int, int]] = []  # (hash order, bytes, task, row) of training documents
    for task in tasks:
        sig_path = task_file(work, "scan", task.index, "sig")
        signatures = (
            np.memmap(sig_path, dtype=np.uint64, mode="r").reshape(-1, num_perm)
            if near is not None and sig_path.stat().st_size
            else None
        )
        keep = bytearray()
        for row, (name, sha, _n_bytes, _offset, length, split) in enumerate(index_rows(work, task.index)):
            key = bytes.fromhex(sha)[:16]
            if key in seen:
                selection.exact_duplicates += 1
                keep.append(0)
                continue
            seen.add(key)
            if signatures is not None and near is not None and not near.offer(np.asarray(signatures[row])):
                selection.near_duplicates += 1
                keep.append(0)
                continue
            keep.append(1)
            selection.split_documents[split] += 1
            if split == "train":
                candidates.append((_unit_interval("autarky-subset", name), length, task.index, row))
        task_file(work, "scan", task.index, "keep").write_bytes(bytes(keep))
        del signatures
    budget = int(cfg.tokenizer_sample_mb * _MB)
    chosen = []
    for _, length, task_index, row in sorted(candidates):
        if selection.sample_bytes >= budget:
            break
        chosen.append((task_index, row))
        selection.sample_bytes += length
    selection.sample = sorted(chosen)
    return selection


def read_texts(work: Path, picks: list[tuple[int, int]]) -> Iterator[str]:
    """The kept texts at (task, row), read from the tasks' text files one at a time."""
    by_task: dict[int, list[int]] = {}
    for task_index, row in picks:
        by_task.setdefault(task_index, []).append(row)
    for task_index, rows in sorted(by_task.items()):
        wanted = set(rows)
        with task_file(work, "scan", task_index, "txt").open("rb") as f:
            for row, (_n, _s, _b, offset, length, _split) in enumerate(index_rows(work, task_index)):
                if row in wanted:
                    f.seek(offset)
                    yield f.read(length).decode("utf-8")
