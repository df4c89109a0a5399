"""`build_dataset`: sources → tasks → (read, filter, PII, dedup, sign) → global dedup → tokenizer → shards.

The build streams: each task reads its documents one at a time and spills what it keeps to the work dir, so a
worker's memory does not grow with the corpus (autarky.data.tasks); one global pass removes duplicates across
tasks (autarky.data.select); each task then tokenizes its survivors into a part, and the parts are joined in task
order. Tasks are cut from the input, not from the number of workers, so 1 worker, 4 workers or a Ray cluster
build the same bytes.

Outputs are staged in DIR/.building/ and moved into place with the manifest last (the old manifest is removed
first), so an interrupted build leaves either the previous complete data dir or one without a manifest — never a
manifest that points at half-written shards. A build killed outright (SIGKILL) leaves its finished tasks in
DIR/.building/tasks-<fingerprint>/, and the next run with the same config and input resumes from them.
Re-running with the same config and the same input finds the same fingerprint in the manifest and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from tokenizers import Tokenizer

from autarky.data.config import DataConfig
from autarky.data.manifest import (
    FORGOTTEN_FILE,
    FORMAT,
    MANIFEST_FILE,
    SPLITS,
    TRACKED_FILES,
    read_forgotten,
    read_manifest,
    shard_file,
    verify_data_dir,
)
from autarky.data.readers import Task, identity_digest, plan_source
from autarky.data.record import write_manifest
from autarky.data.select import Selection, index_rows, read_texts, select_documents
from autarky.data.shards import join_parts
from autarky.data.shards import write_shard as _write_shard
from autarky.data.sources import Document
from autarky.data.tasks import (
    check_ray_address,
    read_done,
    run_tasks,
    scan_task,
    task_file,
    write_json_atomic,
)
from autarky.data.tokenizer import (
    TOKENIZER_FILE,
    BuiltTokenizer,
    prepare_tokenizer,
)
from autarky.errors import UserError

STAGING_DIR = ".building"
_MB = 1_000_000


def plan_tasks(cfg: DataConfig) -> list[Task]:
    """Every source cut into tasks; with --max-mb, each source's share of the budget follows its weight."""
    tasks: list[Task] = []
    for source in cfg.mixture():
        budget = None if cfg.max_mb is None else int(cfg.max_mb * _MB * source.weight)
        prefix = f"{source.name}/" if cfg.sources else ""
        tasks += plan_source(source.name, prefix, source.path, source.glob, budget, int(cfg.task_mb * _MB), len(tasks))
    return tasks


def _fingerprint(cfg: DataConfig, tasks: list[Task], tokenizer_sha: str | None) -> str:
    """Everything that determines the output bytes; the output path and the sources' locations do not."""
    config = cfg.model_dump(mode="json", exclude={"out", "corpus", "tokenizer"})
    for source in config["sources"]:
        source.pop("path")
    payload = {
        "format": FORMAT,
        "tokenizers": tokenizers.__version__,
        "config": config,
        "input": identity_digest(tasks),
        "tokenizer": tokenizer_sha,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a new or existing data dir")
    if out.is_dir():
        entries = {p.name for p in out.iterdir()}
        if entries and not entries & {MANIFEST_FILE, STAGING_DIR, FORGOTTEN_FILE}:
            raise UserError(
                f"--out {out} exists and is not a data dir (no {MANIFEST_FILE}); pass an empty or new dir"
            )


def _up_to_date(out: Path, fingerprint: str) -> dict | None:
    try:
        if read_manifest(out)["fingerprint"] != fingerprint:
            return None
        return verify_data_dir(out)
    except UserError:
        return None  # missing, stale or corrupt: rebuild


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,  # an error after a stage must still be the one line on the screen
    )


def _run_stage(bar: Progress, name: str, fn: Callable[..., dict], jobs: list[tuple[Any, ...]],
               workers: int, ray_address: str | None) -> list[dict]:
    """Run one stage's tasks with a progress bar showing documents/s and MB/s."""
    started = time.perf_counter()
    bar_task = bar.add_task(f"{name} (tasks)", total=len(jobs), rate="")
    totals = {"docs": 0, "bytes": 0}

    def on_result(_: int, result: dict) -> None:
        totals["docs"] += result.get("documents_read", result.get("documents", 0))
        totals["bytes"] += result.get("bytes_read", result.get("text_bytes", 0))
        elapsed = max(time.perf_counter() - started, 1e-9)
        rate = f"{totals['docs'] / elapsed:,.0f} docs/s, {totals['bytes'] / _MB / elapsed:,.1f} MB/s"
        bar.update(bar_task, advance=1, rate=rate)

    return run_tasks(fn, jobs, workers, ray_address, on_result)


@contextmanager
def _staging(out: Path, keep: str) -> Iterator[Path]:
    """The staging dir, emptied except for `keep` (a killed build's finished tasks for this same fingerprint)."""
    created = not out.exists()
    staging = out / STAGING_DIR
    if staging.is_dir():
        for entry in staging.iterdir():
            if entry.name != keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    else:
        staging.unlink(missing_ok=True)
        staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _commit(staging: Path, out: Path) -> None:
    """Move staged files into `out`: drop the old manifest first, put the new one last."""
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    for name in TRACKED_FILES:
        os.replace(staging / name, out / name)
    os.replace(staging / MANIFEST_FILE, out / MANIFEST_FILE)
    shutil.rmtree(staging)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the renames durable before anyone trusts the manifest
    finally:
        os.close(fd)


def _where(cfg: DataConfig, tasks: list[Task]) -> str:
    return tasks[0].root if not cfg.sources else ", ".join(f"{s.name}={s.path}" for s in cfg.sources)


def _check_splits(cfg: DataConfig, tasks: list[Task], selection: Selection) -> None:
    total = sum(selection.split_documents.values())
    if total == 0:
        label = f"corpus {cfg.corpus}" if not cfg.sources else f"the mixture ({_where(cfg, tasks)})"
        raise UserError(f"{label} has no non-empty UTF-8 documents; point --corpus at some text")
    for name in SPLITS:
        if not selection.split_documents[name]:
            raise UserError(
                f"the {name} split of {_where(cfg, tasks)} is empty ({total} documents, --val-fraction "
                f"{cfg.val_fraction}); add documents, raise --max-mb, or change --val-fraction"
            )


def _kept_documents(work: Path, index: int, keep: bytes, split: str) -> Iterator[Document]:
    """The task's surviving documents of `split`, named by their row (unique, unlike names in a JSONL file)."""
    with task_file(work, "scan", index, "txt").open("rb") as f:
        for row, (_name, _sha, _n, offset, length, doc_split) in enumerate(index_rows(work, index)):
            if keep[row] and doc_split == split:
                f.seek(offset)
                yield Document(str(row), f.read(length).decode("utf-8"), "", length)


def _train_tokenizer_task(work: Path, sample: list[tuple[int, int]], vocab_size: int, staging: Path) -> dict:
    """Train the tokenizer on the sample and write its files into `staging` (run in a short-lived process)."""
    prepare_tokenizer(None).train(read_texts(work, sample), vocab_size, len(sample), staging)
    return {}


def _tokenize_task(index: int, work: Path, tokenizer_path: str, dtype_name: str, eot_id: int, tokenizer_sha: str
                   ) -> dict:
    """Encode one task's survivors into tok-NNNNN.<split>.bin; done (and resumable) once tok-NNNNN.json exists."""
    done = task_file(work, "tok", index, "json")
    keep = task_file(work, "scan", index, "keep").read_bytes()
    keep_sha = hashlib.sha256(keep).hexdigest()  # a later `forget` changes what survives, not the task's input
    if (result := read_done(done)) is not None and (result["tokenizer"], result.get("keep")) == (tokenizer_sha,
                                                                                                   keep_sha):
        return {**_summary(result), "resumed": True}
    tokenizer = Tokenizer.from_file(tokenizer_path)
    result = {"tokenizer": tokenizer_sha, "keep": keep_sha, "parts": {}, "tokens": {}, "documents": 0,
              "text_bytes": 0}
    with Progress(disable=True) as quiet:
        for split in SPLITS:
            docs = _kept_documents(work, index, keep, split)
            counts, info = _write_shard(
                tokenizer, docs, task_file(work, "tok", index, f"{split}.bin"), np.dtype(dtype_name), quiet, split,
                eot_id=eot_id,
            )
            result["parts"][split], result["tokens"][split] = info, counts
            result["documents"] += len(counts)
    write_json_atomic(done, result)
    return {**_summary(result), "resumed": False}


def _summary(result: dict) -> dict:
    """A tokenize task's result without its per-document counts: the parent reads those from disk, task by task."""
    return {k: v for k, v in result.items() if k != "tokens"}


def build_dataset(
    cfg: DataConfig, progress: bool = True, *, workers: int | None = None, ray_address: str | None = None,
    documents: bool = True,
) -> dict:
    """Build (or reuse) the data dir `cfg.out`; returns its manifest plus "reused": whether nothing was rebuilt.

    documents=False leaves out the manifest's document list (read back from disk otherwise: O(documents) memory).
    `workers` (default: one per CPU, at most one per task) and `ray_address` change where tasks run, never
    what they produce; "resumed_tasks" in the result counts tasks a killed earlier run had already finished.
    """
    out = cfg.out.expanduser()
    _check_out_dir(out)
    if ray_address is not None:
        check_ray_address(ray_address)
    tasks = plan_tasks(cfg)
    reused_tokenizer = prepare_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    fingerprint = _fingerprint(cfg, tasks, reused_tokenizer.sha256 if reused_tokenizer else None)
    if (existing := _up_to_date(out, fingerprint)) is not None:
        return {**{k: v for k, v in existing.items() if documents or k != "documents"}, "reused": True}
    workers = workers or min(os.cpu_count() or 1, len(tasks))

    work_name = f"tasks-{fingerprint[:16]}"
    with _progress(progress) as bar, _staging(out, work_name) as staging:
        work = staging / work_name
        work.mkdir(exist_ok=True)
        scans = _run_stage(bar, "reading", scan_task, [(t, cfg, work) for t in tasks], workers, ray_address)
        forgotten = read_forgotten(out)
        selection = select_documents(cfg, tasks, work, forgotten)
        _check_splits(cfg, tasks, selection)

        task = bar.add_task("tokenizer", total=1, rate="")
        if reused_tokenizer is not None:
            tokenizer = reused_tokenizer.install(staging)
        else:
            # in its own short-lived process: the trainer's memory is the peak of a build's parent otherwise
            run_tasks(_train_tokenizer_task, [(work, selection.sample, cfg.vocab_size, staging)], 1, ray_address,
                      lambda *_: None, isolate=True)
            tokenizer = BuiltTokenizer.trained(staging)
        bar.update(task, completed=1, rate=f"{selection.sample_bytes / _MB:,.1f} MB sample")

        jobs = [(t.index, work, str(staging / TOKENIZER_FILE), tokenizer.dtype.name, tokenizer.eot_id,
                 tokenizer.sha256) for t in tasks]
        encoded = _run_stage(bar, "tokenizing", _tokenize_task, jobs, workers, ray_address)
        files = tokenizer.files(staging)
        for split in SPLITS:
            files[shard_file(split)] = join_parts(
                (task_file(work, "tok", t.index, f"{split}.bin") for t in tasks), staging / shard_file(split)
            )
        manifest = write_manifest(staging / MANIFEST_FILE, cfg, tasks, work, fingerprint, tokenizer, files, scans,
                                  selection, forgotten)
        _commit(staging, out)
    resumed = sum(1 for r in [*scans, *encoded] if r.get("resumed"))
    if documents:
        manifest = read_manifest(out)
    return {**manifest, "reused": False, "resumed_tasks": resumed}
