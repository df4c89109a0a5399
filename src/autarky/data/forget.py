"""`autarky data forget PATH|SHA`: remove one document from a built data dir, provably.

Only the split file that holds the document is rewritten (streamed, without the document's tokens); the
tokenizer and the other split are untouched. The deletion is also appended to DIR/forgotten.json, which every
later `data build` of the dir reads: the document (and any exact copy) stays out even when the input still holds
it. The manifest loses the document, gains a `deletions` record, and has the new size and sha256 of the rewritten
file, so `autarky data verify` and every training run that opens the data dir check that they read the data set
without it. As with a build, the old manifest goes first and
the new one last: an interruption leaves a data dir that refuses to load, never one that lies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from autarky.data.manifest import FORGOTTEN_FILE, MANIFEST_FILE, read_forgotten, shard_file, verify_data_dir
from autarky.data.record import built_at
from autarky.data.shards import HashingWriter
from autarky.errors import UserError

_BLOCK_TOKENS = 1 << 20


def _find(documents: list[dict], key: str, data_dir: Path) -> int:
    matches = [i for i, d in enumerate(documents) if key in (d["relpath"], d["sha256"])]
    if not matches:
        raise UserError(f"no document named or hashed {key!r} in {data_dir}; see the manifest's documents")
    if len(matches) > 1:
        raise UserError(f"{key!r} names {len(matches)} documents in {data_dir}; pass one's sha256 instead")
    return matches[0]


def _copy_without(src: Path, dst: Path, dtype: np.dtype, start: int, stop: int) -> dict:
    """Copy the token file `src` to `dst` without tokens [start, stop), block by block."""
    tokens = np.memmap(src, dtype=dtype, mode="r")
    with dst.open("wb") as f:
        writer = HashingWriter(f)
        for lo, hi in ((0, start), (stop, len(tokens))):
            for block in range(lo, hi, _BLOCK_TOKENS):
                writer.write(np.asarray(tokens[block : min(block + _BLOCK_TOKENS, hi)]))
        f.flush()
        os.fsync(f.fileno())
    del tokens
    return writer.info()


def forget_document(data_dir: str | Path, key: str) -> dict:
    """Remove the document whose relative path or sha256 is `key`; returns the deletion record."""
    data_dir = Path(data_dir)
    manifest = verify_data_dir(data_dir)
    documents = manifest["documents"]
    i = _find(documents, key, data_dir)
    doc = documents[i]
    split = doc["split"]
    if manifest["splits"][split]["documents"] <= 1:
        raise UserError(f"{key!r} is the last document of the {split} split; rebuild without it instead")
    start = sum(d["tokens"] + 1 for d in documents[:i] if d["split"] == split)  # documents are in shard order
    stop = start + doc["tokens"] + 1
    name = shard_file(split)
    tmp = data_dir / f"{name}.forget"
    info = _copy_without(data_dir / name, tmp, np.dtype(manifest["dtype"]), start, stop)

    deletion = {"relpath": doc["relpath"], "sha256": doc["sha256"], "split": split, "tokens": doc["tokens"],
                "source": doc.get("source"), "at": built_at()}
    # first, so that even an interrupted forget leaves the document out of every later build of this dir
    forgotten = data_dir / FORGOTTEN_FILE
    tmp_list = data_dir / f"{FORGOTTEN_FILE}.tmp"
    tmp_list.write_text(json.dumps([*read_forgotten(data_dir), deletion], indent=1) + "\n")
    os.replace(tmp_list, forgotten)
    del documents[i]
    manifest["files"][name] = info
    for record in (manifest["splits"][split], manifest.get("sources", {}).get(doc.get("source"), {})):
        if record:
            record["documents"] -= 1
            record["tokens"] -= stop - start
            record["text_bytes"] -= doc.get("bytes", 0)
    manifest.setdefault("deletions", []).append(deletion)
    new_manifest = data_dir / f"{MANIFEST_FILE}.forget"
    new_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    (data_dir / MANIFEST_FILE).unlink()
    os.replace(tmp, data_dir / name)
    os.replace(new_manifest, data_dir / MANIFEST_FILE)
    verify_data_dir(data_dir, hash_files=False)
    return deletion
