"""`build_dataset`: corpus → de-duplicated documents → split → BPE tokenizer → token shards + manifest.

Outputs are staged in DIR/.building/ and moved into place with the manifest last (the old manifest is removed
first), so an interrupted build leaves either the previous complete data dir or one without a manifest — never a
manifest that points at half-written shards. Re-running with the same config and the same documents finds the
same fingerprint in the manifest and does nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tokenizers
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer

import autarky
from autarky.data.manifest import (
    FORMAT,
    MANIFEST_FILE,
    SPLITS,
    TRACKED_FILES,
    read_manifest,
    sha256_file,
    shard_dtype,
    shard_file,
    verify_data_dir,
)
from autarky.data.sources import (
    DEFAULT_GLOB,
    STDLIB,
    Corpus,
    Document,
    is_validation_document,
    load_corpus,
    take_subset,
)
from autarky.data.tokenizer import (
    EOT_ID,
    MAX_VOCAB_SIZE,
    MIN_VOCAB_SIZE,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    encode_corpus_texts,
    train_tokenizer,
    write_tokenizer_files,
)
from autarky.errors import UserError

STAGING_DIR = ".building"
_MB = 1_000_000
_ENCODE_BATCH_BYTES = 2 * _MB  # big enough for the Rust side to use both cores, small enough for a lively bar


class DataConfig(BaseModel):
    """What `autarky data build` builds; every field has a default except the output dir."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: Path
    corpus: str = Field(STDLIB, description="'stdlib', a folder, or a .jsonl file with a 'text' field")
    glob: str = Field(DEFAULT_GLOB, description="files to take from a folder corpus")
    vocab_size: int = Field(4096, ge=MIN_VOCAB_SIZE, le=MAX_VOCAB_SIZE)
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    max_mb: float | None = Field(
        None, gt=0.0, description="take a deterministic subset of about this many MB"
    )
    tokenizer_sample_mb: float = Field(
        8.0, gt=0.0, description="train the tokenizer on at most this much text"
    )

    @field_validator("glob")
    @classmethod
    def _glob_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @classmethod
    def create(cls, **fields: object) -> DataConfig:
        """Like DataConfig(**fields), but bad values raise one-line UserErrors phrased as CLI options."""
        try:
            return cls(**fields)
        except ValidationError as e:
            problems = "; ".join(
                f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}"
                for err in e.errors()
            )
            raise UserError(f"bad data config: {problems}") from None


def _fingerprint(cfg: DataConfig, documents: list[Document]) -> str:
    """Everything that determines the output bytes; the output path and corpus location do not."""
    payload = {
        "format": FORMAT,
        "tokenizers": tokenizers.__version__,
        "config": cfg.model_dump(mode="json", exclude={"out", "corpus"}),
        "documents": [[d.relpath, d.sha256] for d in documents],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a new or existing data dir")
    if out.is_dir():
        entries = {p.name for p in out.iterdir()}
        if entries and MANIFEST_FILE not in entries and STAGING_DIR not in entries:
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
        DownloadColumn(binary_units=False),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


class _HashingWriter:
    """Appends token arrays to a file while hashing them, so the shard is read back zero times."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.digest, self.bytes = f, hashlib.sha256(), 0

    def write(self, array: np.ndarray) -> None:
        data = array.tobytes()
        self.f.write(data)
        self.digest.update(data)
        self.bytes += len(data)


def _batches(documents: list[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    size = 0
    for doc in documents:
        batch.append(doc)
        size += doc.n_bytes
        if size >= _ENCODE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_shard(
    tokenizer: Tokenizer,
    documents: list[Document],
    path: Path,
    dtype: np.dtype,
    progress: Progress,
    split: str,
) -> tuple[dict[str, int], dict]:
    """Encode `documents` into `path`, each followed by <|endoftext|>; returns per-document token counts + file info."""
    task = progress.add_task(f"tokenizing {split}", total=sum(d.n_bytes for d in documents))
    counts: dict[str, int] = {}
    with path.open("wb") as f:
        writer = _HashingWriter(f)
        for batch in _batches(documents):
            for doc, ids in zip(batch, encode_corpus_texts(tokenizer, [d.text for d in batch]), strict=True):
                counts[doc.relpath] = len(ids)
                writer.write(np.asarray([*ids, EOT_ID], dtype=dtype))
            progress.advance(task, sum(d.n_bytes for d in batch))
        f.flush()
        os.fsync(f.fileno())
    return counts, {"bytes": writer.bytes, "sha256": writer.digest.hexdigest()}


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    created = not out.exists()
    staging = out / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
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
    staging.rmdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the renames durable before anyone trusts the manifest
    finally:
        os.close(fd)


def _split(cfg: DataConfig, corpus: Corpus, documents: list[Document]) -> dict[str, list[Document]]:
    splits: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for doc in documents:
        splits["val" if is_validation_document(doc.relpath, cfg.val_fraction) else "train"].append(doc)
    for name, docs in splits.items():
        if not docs:
            raise UserError(
                f"the {name} split of {corpus.root} is empty ({len(documents)} documents, --val-fraction "
                f"{cfg.val_fraction}); add documents, raise --max-mb, or change --val-fraction"
            )
    return splits


def build_dataset(cfg: DataConfig, progress: bool = True) -> dict:
    """Build (or reuse) the data dir `cfg.out`; returns its manifest plus "reused": whether nothing was rebuilt."""
    out = cfg.out.expanduser()
    _check_out_dir(out)
    corpus = load_corpus(cfg.corpus, cfg.glob)
    documents = take_subset(corpus.documents, None if cfg.max_mb is None else int(cfg.max_mb * _MB))
    splits = _split(cfg, corpus, documents)
    fingerprint = _fingerprint(cfg, documents)
    if (existing := _up_to_date(out, fingerprint)) is not None:
        return {**existing, "reused": True}

    with _progress(progress) as bar, _staging(out) as staging:
        sample = take_subset(splits["train"], int(cfg.tokenizer_sample_mb * _MB))
        task = bar.add_task("training tokenizer", total=sum(d.n_bytes for d in sample))
        tokenizer = train_tokenizer((d.text for d in sample), cfg.vocab_size, length=len(sample))
        bar.update(task, completed=sum(d.n_bytes for d in sample))
        write_tokenizer_files(tokenizer, staging)
        vocab_size = tokenizer.get_vocab_size()
        dtype = shard_dtype(vocab_size)

        files = {
            name: {"bytes": (staging / name).stat().st_size, "sha256": sha256_file(staging / name)}
            for name in TRACKED_FILES
            if not name.endswith(".bin")
        }
        token_counts: dict[str, int] = {}
        for split, docs in splits.items():
            counts, files[shard_file(split)] = _write_shard(
                tokenizer, docs, staging / shard_file(split), dtype, bar, split
            )
            token_counts.update(counts)

        manifest = {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "eot_id": EOT_ID,
            "special_tokens": {token: i for i, token in enumerate(SPECIAL_TOKENS)},
            "tokenizer_sha256": files[TOKENIZER_FILE]["sha256"],
            "files": files,
            "splits": {
                split: {
                    "documents": len(docs),
                    "text_bytes": sum(d.n_bytes for d in docs),
                    "tokens": files[shard_file(split)]["bytes"] // dtype.itemsize,
                }
                for split, docs in splits.items()
            },
            "documents": [
                {
                    "relpath": d.relpath,
                    "sha256": d.sha256,
                    "split": "val" if is_validation_document(d.relpath, cfg.val_fraction) else "train",
                    "tokens": token_counts[d.relpath],
                }
                for d in documents
            ],
            "config": cfg.model_dump(mode="json"),
            "provenance": {
                "source_kind": corpus.kind,
                "source_root": corpus.root,
                "documents_found": len(corpus.documents),
                "duplicates_removed": corpus.duplicates,
                "skipped_not_utf8": corpus.skipped,
                "tokenizer_sample_documents": len(sample),
                "python": sys.version,
                "platform": platform.platform(),
                "tokenizers": tokenizers.__version__,
                "autarky": autarky.__version__,
                "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        _commit(staging, out)
    return {**manifest, "reused": False}
