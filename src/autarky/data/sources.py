"""Corpus sources: a folder, a JSONL file, or the running interpreter's standard library.

Every source yields `Document`s named by a stable relative path. Two rules here are contracts other stages rely on:
- the train/validation split of a document depends only on its relative path (`is_validation_document`), so a
  document's split never changes with the rest of the corpus, the subset size or the machine;
- the subset taken under a size budget (`take_subset`) follows a fixed hash order, so a smaller budget gives a
  prefix of a larger one's selection.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
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


def _is_stdlib_junk(relpath: str) -> bool:
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


def _read_folder(root: Path, pattern: str, *, stdlib: bool) -> tuple[list[tuple[str, str]], list[str]]:
    texts: list[tuple[str, str]] = []
    skipped: list[str] = []
    try:
        matches = sorted(root.glob(pattern))
    except (ValueError, NotImplementedError):
        raise UserError(f"--glob {pattern!r} is not a relative pattern; use one like '**/*.py'") from None
    for path in matches:
        relpath = path.relative_to(root).as_posix()
        if not path.is_file() or (stdlib and _is_stdlib_junk(relpath)):
            continue
        try:
            texts.append((relpath, path.read_bytes().decode("utf-8")))
        except UnicodeDecodeError:
            skipped.append(relpath)
    return texts, skipped


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    """Each line an object with a string `text`; a document is named `<file>:<id>` if it has an `id`, else by line."""
    texts: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{lineno} is not valid JSON ({e.msg}); fix the line or remove it"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(
                    f'{path}:{lineno} has no string field \'text\'; every JSONL line must look like {{"text": "..."}}'
                )
            name = record.get("id", lineno)
            texts.append((f"{path.name}:{name}", record["text"]))
    return texts


def load_corpus(corpus: str, glob: str = DEFAULT_GLOB) -> Corpus:
    """Read, decode and de-duplicate every document of `corpus` ("stdlib", a folder, or a .jsonl file)."""
    if corpus == STDLIB:
        root, kind = stdlib_root(), "stdlib"
    else:
        root = Path(corpus).expanduser().resolve()
        if not root.exists():
            raise UserError(f"corpus {corpus} does not exist; pass a folder, a .jsonl file, or 'stdlib'")
        kind = "folder" if root.is_dir() else "jsonl"
        if kind == "jsonl" and root.suffix not in (".jsonl", ".ndjson"):
            raise UserError(
                f"corpus {corpus} is a file but not .jsonl; pass a folder, a .jsonl file, or 'stdlib'"
            )
    skipped: list[str] = []
    if kind == "jsonl":
        try:
            texts = _read_jsonl(root)
        except UnicodeDecodeError:
            raise UserError(
                f"corpus {corpus} is not a UTF-8 JSONL file; pass a folder or a .jsonl file"
            ) from None
    else:
        texts, skipped = _read_folder(root, glob, stdlib=kind == "stdlib")
        if not texts and not skipped:
            raise UserError(f"no files in {root} match --glob {glob!r}; check the pattern (e.g. '**/*.py')")
    documents, duplicates = _dedup(texts)
    if not documents:
        raise UserError(f"corpus {corpus} has no non-empty UTF-8 documents; point --corpus at some text")
    return Corpus(str(root), kind, documents, skipped, duplicates)
