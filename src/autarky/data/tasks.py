"""The per-task half of a build, and the executors that run tasks (in-process, a local pool, or Ray).

`scan_task` reads one task's documents as a stream and writes, under the build's work dir:
  scan-NNNNN.txt        kept texts (after quality, PII and in-task exact dedup), UTF-8, back to back
  scan-NNNNN.idx.jsonl  one line per kept text: [name, sha256 of the original, original bytes, offset, length, split]
  scan-NNNNN.sig        MinHash signatures, one row of uint32 per kept text (near-dup removal on)
  scan-NNNNN.bands      LSH band keys, one row of uint64 per kept text (near-dup removal on)
  scan-NNNNN.json       the task's counts, written last and atomically: its presence means the task is done,
                        so a killed build resumes from the tasks it finished.
A worker holds one document and its signature at a time; its memory does not grow with the task or corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from autarky.data.config import DataConfig
from autarky.data.filters import quality_failure, scan_pii
from autarky.data.readers import ReadStats, Task, read_task
from autarky.data.sources import is_validation_document
from autarky.errors import UserError

_MB = 1_000_000


def task_file(work: Path, stage: str, index: int, suffix: str) -> Path:
    return work / f"{stage}-{index:05d}.{suffix}"


def write_json_atomic(path: Path, payload: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True))
    os.replace(tmp, path)


def read_done(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def scan_task(task: Task, cfg: DataConfig, work: Path) -> dict:
    """Read, filter, PII-scan, dedup (within the task) and sign one task's documents; see the module doc."""
    done = task_file(work, "scan", task.index, "json")
    if (summary := read_done(done)) is not None:
        return {**summary, "resumed": True}
    from autarky.data.minhash import Signer

    signer = Signer(cfg.dedup) if cfg.dedup.near_dup else None
    stats, filtered, pii = ReadStats(), Counter[str](), Counter[str]()
    seen: set[bytes] = set()
    read = read_bytes = kept = duplicates = pii_docs = 0
    offset = 0
    redact = cfg.pii.mode == "redact"
    with (
        task_file(work, "scan", task.index, "txt").open("wb") as txt,
        task_file(work, "scan", task.index, "idx.jsonl").open("w") as idx,
        task_file(work, "scan", task.index, "sig").open("wb") as sig,
        task_file(work, "scan", task.index, "bands").open("wb") as bands,
    ):
        for name, text in read_task(task, int(cfg.quality.max_doc_mb * _MB), cfg.quality.oversized == "split", stats):
            data = text.encode("utf-8")
            read, read_bytes = read + 1, read_bytes + len(data)
            if len(text.strip()) < cfg.quality.min_chars:
                filtered["min_chars"] += 1
                continue
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            if (failure := quality_failure(text, cfg.quality)) is not None:
                filtered[failure] += 1
                continue
            clean, found = scan_pii(text, redact)
            if found:
                pii.update(found)
                pii_docs += 1
                if cfg.pii.mode == "drop":
                    filtered["pii"] += 1
                    continue
            out = clean.encode("utf-8") if clean is not text else data
            txt.write(out)
            split = "val" if is_validation_document(name, cfg.val_fraction) else "train"
            idx.write(json.dumps([name, digest.hex(), len(data), offset, len(out), split]) + "\n")
            offset += len(out)
            if signer is not None:
                signature = signer.signature(clean)
                sig.write(signature.tobytes())
                bands.write(signer.band_keys(signature).tobytes())
            kept += 1
    summary = {
        "documents_read": read,
        "bytes_read": read_bytes,
        "kept": kept,
        "duplicates": duplicates,
        "filtered": dict(filtered),
        "pii": dict(pii),
        "pii_documents": pii_docs,
        "skipped_not_utf8": stats.skipped_not_utf8,
        "oversized_skipped": stats.oversized_skipped,
        "oversized_split": stats.oversized_split,
    }
    write_json_atomic(done, summary)
    return {**summary, "resumed": False}


def check_ray_address(address: str) -> None:
    """Fail fast with one line when nothing answers at `address` (ray.init would retry for a minute)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            return
    except (OSError, ValueError):
        raise UserError(f"--ray-address {address}: no Ray cluster answers there; start one with `ray start --head`") from None


@contextmanager
def _without_main_module() -> Iterator[None]:
    """Start spawned workers without re-running the parent's main script.

    A spawned child imports the parent's `__main__` by path unless it is a package's __main__; for the `autarky`
    console script that means the whole CLI, torch included (~250 MB per worker), for task functions that live
    in this package and need none of it.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def run_tasks(
    fn: Callable[..., dict],
    jobs: list[tuple[Any, ...]],
    workers: int,
    ray_address: str | None,
    on_result: Callable[[int, dict], None],
    *,
    isolate: bool = False,
) -> list[dict]:
    """Run fn(*job) for every job; results in job order. Workers only change speed, never the results.

    isolate=True runs even a single job in a child process (or a Ray task), so its memory is never the caller's.
    """
    results: list[dict | None] = [None] * len(jobs)
    if ray_address is not None:
        _run_on_ray(fn, jobs, ray_address, results, on_result)
    elif not isolate and (workers <= 1 or len(jobs) <= 1):
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            on_result(i, results[i])
    else:
        # spawn, not fork: the Rust tokenizer's thread pool does not survive a fork
        with (
            ProcessPoolExecutor(max(1, min(workers, len(jobs))), mp_context=get_context("spawn")) as pool,
            _without_main_module(),
        ):
            pending = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    results[i] = future.result()
                    on_result(i, results[i])
    return [r for r in results if r is not None]


def _run_on_ray(fn: Callable[..., dict], jobs: Iterable[tuple[Any, ...]], address: str,
                results: list[dict | None], on_result: Callable[[int, dict], None]) -> None:
    import ray

    check_ray_address(address)
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(fn)
        pending = {remote.remote(*job): i for i, job in enumerate(jobs)}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise (e.cause if isinstance(e.cause, BaseException) else e) from None
                on_result(i, results[i])  # type: ignore[arg-type]
    finally:
        ray.shutdown()
