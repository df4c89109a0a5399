"""The global half of a build: forgotten, exact and near-duplicate documents removed across all tasks, and the
tokenizer sample.

One process walks the tasks' outputs in task order (so the first copy of a document in corpus order is the one
kept, whatever the number of workers) and writes scan-NNNNN.keep: one byte per indexed document. Its memory is a
few dozen bytes per document in numpy arrays (16 bytes of sha256, a removed flag, one band of LSH keys at a
time; see autarky.data.minhash), the union-find of near-duplicates and a heap as large as the tokenizer sample;
texts and signatures stay on disk.
"""

from __future__ import annotations

import heapq
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
    forgotten: int = 0
    split_documents: Counter[str] = field(default_factory=Counter)
    sample: list[tuple[int, int]] = field(default_factory=list)  # (task, row) of the tokenizer sample, in order
    sample_bytes: int = 0


def index_rows(work: Path, index: int) -> Iterator[list]:
    with task_file(work, "scan", index, "idx.jsonl").open() as f:
        for line in f:
            yield json.loads(line)


def _exact_duplicates(keys: np.ndarray, removed: np.ndarray) -> int:
    """Mark every copy but the first of each sha256 among the documents not yet removed; returns how many."""
    ids = np.flatnonzero(~removed)
    order = np.lexsort((ids, keys[ids, 1], keys[ids, 0]))
    sorted_keys = keys[ids[order]]
    same = np.all(sorted_keys[1:] == sorted_keys[:-1], axis=1)
    removed[ids[order[1:][same]]] = True
    return int(same.sum())


def _near_duplicates(cfg: DataConfig, tasks: list[Task], work: Path, offsets: np.ndarray, removed: np.ndarray) -> int:
    from autarky.data.minhash import near_duplicate_clusters

    num_perm, bands = cfg.dedup.bands * cfg.dedup.rows, cfg.dedup.bands

    def band_columns(band: int) -> tuple[np.ndarray, np.ndarray]:
        columns = []
        for task in tasks:
            path = task_file(work, "scan", task.index, "bands")
            if path.stat().st_size:
                columns.append(np.array(np.memmap(path, dtype=np.uint64, mode="r").reshape(-1, bands)[:, band]))
        keys = np.concatenate(columns) if columns else np.zeros(0, dtype=np.uint64)
        return keys, np.arange(len(keys), dtype=np.int64)

    def signature_of(doc: int) -> np.ndarray:
        t = int(np.searchsorted(offsets, doc, side="right")) - 1
        path = task_file(work, "scan", tasks[t].index, "sig")
        return np.fromfile(path, dtype=np.uint32, count=num_perm, offset=(doc - int(offsets[t])) * num_perm * 4)

    clusters = near_duplicate_clusters(band_columns, signature_of, cfg.dedup, removed)
    near = [doc for doc in clusters.parent if clusters.find(doc) != doc]
    removed[near] = True
    return len(near)


def select_documents(cfg: DataConfig, tasks: list[Task], work: Path, forgotten: list[dict] = ()) -> Selection:
    """Decide which indexed documents survive; choose the tokenizer's sample among them.

    `forgotten` are `data forget` records (relpath, sha256): documents matching either are left out, exact
    copies included, on every later build of the data dir.
    """
    forgotten_names = {f["relpath"] for f in forgotten}
    forgotten_shas = {f["sha256"] for f in forgotten}
    rows = []
    for task in tasks:
        with task_file(work, "scan", task.index, "idx.jsonl").open("rb") as f:
            rows.append(sum(1 for _ in f))
    offsets = np.concatenate(([0], np.cumsum(rows))).astype(np.int64)
    keys = np.zeros((int(offsets[-1]), 2), dtype=np.uint64)
    removed = np.zeros(int(offsets[-1]), dtype=bool)
    selection = Selection()
    for t, task in enumerate(tasks):
        for row, (name, sha, *_rest) in enumerate(index_rows(work, task.index)):
            doc = int(offsets[t]) + row
            keys[doc] = np.frombuffer(bytes.fromhex(sha)[:16], dtype=">u8")
            if name in forgotten_names or sha in forgotten_shas:
                removed[doc] = True
                selection.forgotten += 1
    selection.exact_duplicates = _exact_duplicates(keys, removed)
    del keys
    if cfg.dedup.near_dup:
        selection.near_duplicates = _near_duplicates(cfg, tasks, work, offsets, removed)

    budget = int(cfg.tokenizer_sample_mb * _MB)
    heap: list[tuple[float, int, int, int]] = []  # the sample so far, as negated (hash order, bytes, task, row)
    for t, task in enumerate(tasks):
        keep = ~removed[offsets[t] : offsets[t + 1]]
        task_file(work, "scan", task.index, "keep").write_bytes(keep.astype(np.uint8).tobytes())
        for row, (name, _sha, _n_bytes, _offset, length, split) in enumerate(index_rows(work, task.index)):
            if not keep[row]:
                continue
            selection.split_documents[split] += 1
            if split == "train":
                heapq.heappush(heap, (-_unit_interval("autarky-subset", name), -length, -task.index, -row))
                selection.sample_bytes += length
                # the sample is the shortest prefix, in hash order, that reaches the budget: drop the last
                # document while the ones before it already reach it
                while len(heap) > 1 and selection.sample_bytes + heap[0][1] >= budget:
                    selection.sample_bytes += heapq.heappop(heap)[1]
    selection.sample = sorted((-task_index, -row) for _, _, task_index, row in heap)
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
