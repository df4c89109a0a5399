"""Documents and the rules about them: names, the per-document split, subsets, exact dedup.

Every source yields `Document`s named by a stable relative path. Two rules here are contracts other stages rely on:
- the train/validation split of a document depends only on its relative path (`is_validation_document`), so a
  document's split never changes with the rest of the corpus, the subset size or the machine;
- the subset taken under a size budget (`take_subset`) follows a fixed hash order, so a smaller budget gives a
  prefix of a larger one's selection.
"""

from __future__ import annotations

import fnmatch
import hashlib
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from autarky.errors import UserError

STDLIB = "stdlib"
DEFAULT_GLOB = "**/*.py"

# Parts of the standard library that are not source worth learning from: installed packages, caches, compiled
# extensions, the machine-specific sysconfig dump, generated docs, and test fixtures that are deliberately
# mis-encoded or not valid Python (tokenizer/encoding tests, lib2to3's Python 2 samples).
_STDLIB_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "lib-dynload",
        "pydoc_data",
        "tokenizedata",
        "encoded_modules",
    }
)
_STDLIB_SKIP_PATTERNS = ("_sysconfigdata_*", "config-*/*", "lib2to3/tests/data/*")


@dataclass(frozen=True)
class Document:
    relpath: str
    text: str
    sha256: str  # of the UTF-8 bytes
    n_bytes: int  # length of the UTF-8 bytes

    @classmethod
    def from_text(cls, relpath: str, text: str) -> Document:
        data = text.encode("utf-8")
        return cls(relpath, text, hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class Corpus:
    root: str  # absolute path of the folder or file the documents came from
    kind: str  # "stdlib", "folder" or "jsonl"
    documents: list[Document]
    skipped: list[str]  # relative paths left out (not UTF-8)
    duplicates: int  # exact duplicates removed


def _unit_interval(salt: str, relpath: str) -> float:
    digest = hashlib.sha256(f"{salt}:{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation_document(relpath: str, val_fraction: float) -> bool:
    """Whether the document named `relpath` belongs to the validation split.

    sha256("autarky-split:" + relpath) mapped to [0, 1) and compared with `val_fraction`: the answer depends on
    nothing but these two arguments, so evals can tell held-out documents from trained-on ones by name alone.
    """
    return _unit_interval("autarky-split", relpath) < val_fraction


def take_subset(documents: list[Document], max_bytes: int | None) -> list[Document]:
    """Documents in a fixed hash order until `max_bytes` of UTF-8 text is reached (the last one may overshoot)."""
    if max_bytes is None:
        return documents
    ordered = sorted(documents, key=lambda d: _unit_interval("autarky-subset", d.relpath))
    chosen: list[Document] = []
    total = 0
    for doc in ordered:
        if total >= max_bytes:
            break
        chosen.append(doc)
        total += doc.n_bytes
    return sorted(chosen, key=lambda d: d.relpath)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def is_stdlib_junk(relpath: str) -> bool:
    parts = relpath.split("/")
    if any(part in _STDLIB_SKIP_DIRS for part in parts[:-1]):
        return True
    return any(fnmatch.fnmatchcase(relpath, pattern) for pattern in _STDLIB_SKIP_PATTERNS)


def _dedup(named_texts: Iterable[tuple[str, str]]) -> tuple[list[Document], int]:
    """Keep the first (in relative-path order) of each set of byte-identical documents; drop empty ones."""
    seen: set[str] = set()
    kept: list[Document] = []
    duplicates = 0
    for relpath, text in sorted(named_texts):
        if not text.strip():
            continue
        doc = Document.from_text(relpath, text)
        if doc.sha256 in seen:
            duplicates += 1
            continue
        seen.add(doc.sha256)
        kept.append(doc)
    return kept, duplicates


def load_corpus(corpus: str, glob: str = DEFAULT_GLOB) -> Corpus:
    """Read, decode and de-duplicate every document of `corpus` into memory (for small corpora and evals).

    `autarky data build` streams instead (autarky.data.readers); this reads through the same readers.
    """
    from autarky.data.readers import ReadStats, plan_source, read_task

    stats = ReadStats()
    tasks = plan_source("corpus", "", corpus, glob, None, 1 << 62, 0)
    texts = [doc for task in tasks for doc in read_task(task, 1 << 62, False, stats)]
    documents, duplicates = _dedup(texts)
    if not documents:
        raise UserError(f"corpus {corpus} has no non-empty UTF-8 documents; point --corpus at some text")
    return Corpus(tasks[0].root, tasks[0].kind, documents, stats.skipped_not_utf8, duplicates)
