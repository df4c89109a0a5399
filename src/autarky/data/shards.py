"""Token shards: documents encoded in batches into a file, and per-task parts joined into one split file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from rich.progress import Progress
from tokenizers import Tokenizer

from autarky.data.sources import Document
from autarky.data.tokenizer import EOT_ID, encode_corpus_texts

_ENCODE_BATCH_BYTES = 1_000_000  # big enough for the Rust side to use several cores, small enough to stay bounded
_COPY_BLOCK = 1 << 22


class HashingWriter:
    """Appends token arrays (or raw bytes) to a file while hashing them, so the shard is read back zero times."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.digest, self.bytes = f, hashlib.sha256(), 0

    def write(self, array: np.ndarray | bytes) -> None:
        data = array if isinstance(array, bytes) else array.tobytes()
        self.f.write(data)
        self.digest.update(data)
        self.bytes += len(data)

    def info(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.digest.hexdigest()}


def batches(documents: Iterable[Document]) -> Iterator[list[Document]]:
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


def write_shard(
    tokenizer: Tokenizer,
    documents: Iterable[Document],
    path: Path,
    dtype: np.dtype,
    progress: Progress,
    split: str,
    eot_id: int = EOT_ID,
) -> tuple[dict[str, int], dict]:
    """Encode `documents` into `path`, each followed by the end-of-text id; returns tokens per name + file info."""
    task = progress.add_task(f"tokenizing {split}", total=None)
    counts: dict[str, int] = {}
    with path.open("wb") as f:
        writer = HashingWriter(f)
        for batch in batches(documents):
            for doc, ids in zip(batch, encode_corpus_texts(tokenizer, [d.text for d in batch]), strict=True):
                counts[doc.relpath] = len(ids)
                writer.write(np.asarray([*ids, eot_id], dtype=dtype))
            progress.advance(task, sum(d.n_bytes for d in batch))
        f.flush()
        os.fsync(f.fileno())
    return counts, writer.info()


def join_parts(parts: Iterable[Path], path: Path) -> dict:
    """Concatenate part files into `path` (block by block), returning its size and sha256."""
    with path.open("wb") as f:
        writer = HashingWriter(f)
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(_COPY_BLOCK):
                    writer.write(block)
        f.flush()
        os.fsync(f.fileno())
    return writer.info()
