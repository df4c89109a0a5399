"""The manifest of a build: files, splits, sources with their weights, what each filter removed, documents.

Documents are listed in shard order, streamed into the file task by task, (task by task, as the parts are joined), so a document's tokens start where
the tokens of the documents before it in the same split end: `autarky data forget` relies on that. The manifest
depends only on the config and the input (never on workers or timing); its `built_at` honours
SOURCE_DATE_EPOCH, the reproducible-builds convention, so two builds can be compared byte for byte.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import tokenizers

import autarky
from autarky.data.config import DataConfig
from autarky.data.manifest import FORMAT, SPLITS, shard_file
from autarky.data.readers import Task
from autarky.data.select import Selection, index_rows
from autarky.data.tasks import task_file
from autarky.data.tokenizer import TOKENIZER_FILE, BuiltTokenizer

_DOCUMENTS = "\0documents\0"  # where the streamed document list goes in the manifest's JSON


def built_at() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return moment.isoformat(timespec="seconds")


def _filters(scans: list[dict], selection: Selection) -> dict[str, int]:
    removed: Counter[str] = Counter({"min_chars": 0, "max_symbol_ratio": 0, "max_repeated_lines": 0, "pii": 0})
    for scan in scans:
        removed.update(scan["filtered"])
    removed["exact_duplicates"] = sum(s["duplicates"] for s in scans) + selection.exact_duplicates
    removed["near_duplicates"] = selection.near_duplicates
    removed["forgotten"] = selection.forgotten
    removed["oversized_skipped"] = sum(s["oversized_skipped"] for s in scans)
    return dict(removed)


def _documents(tasks: list[Task], work: Path) -> Iterator[dict]:
    """The surviving documents in shard order, read task by task from the work dir (never all held at once)."""
    for task in tasks:
        keep = task_file(work, "scan", task.index, "keep").read_bytes()
        tokens = json.loads(task_file(work, "tok", task.index, "json").read_text())["tokens"]
        for row, (name, sha, n_bytes, _offset, _length, split) in enumerate(index_rows(work, task.index)):
            if keep[row]:
                yield {"relpath": name, "sha256": sha, "split": split, "tokens": tokens[split][str(row)],
                       "bytes": n_bytes, "source": task.source}


def write_manifest(
    path: Path,
    cfg: DataConfig,
    tasks: list[Task],
    work: Path,
    fingerprint: str,
    tokenizer: BuiltTokenizer,
    files: dict[str, dict],
    scans: list[dict],
    selection: Selection,
    forgotten: list[dict],
) -> dict:
    """Write manifest.json to `path`; returns it without "documents" (held by no one: O(documents) in size)."""
    mixture = cfg.mixture()
    sources = {
        s.name: {"path": s.path, "kind": "", "weight": s.weight, "documents": 0, "text_bytes": 0, "tokens": 0,
                 "pii": Counter[str](), "pii_documents": 0}
        for s in mixture
    }
    splits = {s: {"documents": 0, "text_bytes": 0, "tokens": 0} for s in SPLITS}
    for task, scan in zip(tasks, scans, strict=True):
        source = sources[task.source]
        source["kind"] = task.kind
        source["pii"].update(scan["pii"])
        source["pii_documents"] += scan["pii_documents"]
    for doc in _documents(tasks, work):
        for record in (sources[doc["source"]], splits[doc["split"]]):
            record["documents"] += 1
            record["text_bytes"] += doc["bytes"]
            record["tokens"] += doc["tokens"] + 1  # each document is followed by the end-of-text id
    for split in SPLITS:
        assert splits[split]["tokens"] * tokenizer.dtype.itemsize == files[shard_file(split)]["bytes"]
    for source in sources.values():
        source["pii"] = dict(sorted(source["pii"].items()))
    single = not cfg.sources
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "dtype": tokenizer.dtype.name,
        "eot_id": tokenizer.eot_id,
        "special_tokens": tokenizer.special_tokens,
        "tokenizer_sha256": files[TOKENIZER_FILE]["sha256"],
        "files": files,
        "splits": splits,
        "sources": sources,
        "filters": _filters(scans, selection),
        "pii": {"mode": cfg.pii.mode, "matches": dict(sum((Counter(s["pii"]) for s in scans), Counter()))},
        "deletions": forgotten,  # `data forget` records: left out of this build and of every later one
        "documents": _DOCUMENTS,
        "config": cfg.model_dump(mode="json"),
        "provenance": {
            "source_kind": tasks[0].kind if single else "mixture",
            "source_root": tasks[0].root if single else ", ".join(f"{s.name}={s.path}" for s in mixture),
            "documents_found": sum(s["documents_read"] for s in scans),
            "bytes_read": sum(s["bytes_read"] for s in scans),
            "duplicates_removed": sum(s["duplicates"] for s in scans) + selection.exact_duplicates,
            "near_duplicates_removed": selection.near_duplicates,
            "skipped_not_utf8": [name for s in scans for name in s["skipped_not_utf8"]],
            "oversized_split": sum(s["oversized_split"] for s in scans),
            "tasks": len(tasks),
            "tokenizer_sample_documents": len(selection.sample),
            "tokenizer_reused_from": cfg.tokenizer,
            "python": sys.version,
            "platform": platform.platform(),
            "tokenizers": tokenizers.__version__,
            "autarky": autarky.__version__,
            "built_at": built_at(),
        },
    }
    # the documents are streamed into the file between the fields before and after them, one line each
    before, after = json.dumps(manifest, indent=1).split(json.dumps(_DOCUMENTS))
    with path.open("w") as f:
        f.write(before + "[")
        for i, doc in enumerate(_documents(tasks, work)):
            f.write(("\n  " if i == 0 else ",\n  ") + json.dumps(doc))
        f.write("\n ]" + after + "\n")
    del manifest["documents"]
    return manifest
