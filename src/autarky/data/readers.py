"""Streaming readers: a source becomes independent tasks, and a task yields its documents one at a time.

Tasks are cut from the input alone (files, line-aligned byte ranges of a JSONL file, Parquet row groups), never
from the number of workers, so 1 worker and 40 produce the same tasks and, concatenated in task order, the
same bytes. A reader holds one document (at most `max_doc_bytes`) at a time, whatever the corpus size.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from autarky.data.sources import _unit_interval, is_stdlib_junk, stdlib_root
from autarky.errors import UserError

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Task:
    """One independent unit of input: some files, a byte range of one JSONL file, or Parquet row groups."""

    index: int
    source: str  # the source's name
    prefix: str  # prepended to every document name ("" for a single source)
    kind: str  # "stdlib", "folder", "jsonl", "jsonl.zst" or "parquet"
    root: str  # the folder, or the file
    files: tuple[str, ...] = ()  # folder kinds: relative paths, sorted
    start: int = 0  # jsonl: byte offset; parquet: first row group
    end: int = -1  # jsonl: byte offset; parquet: row group after the last; -1: to the end
    first_line: int = 1  # jsonl: the line number at `start`
    first_row: int = 0  # parquet: the row number at `start`
    budget: int | None = None  # stop after this many bytes of text
    identity: str = ""  # what the fingerprint hashes: names, sizes and mtimes of the input


@dataclass
class ReadStats:
    """What a reader left out, for the manifest."""

    skipped_not_utf8: list[str] = field(default_factory=list)
    oversized_skipped: int = 0
    oversized_split: int = 0


def source_kind(path: str, label: str) -> tuple[Path, str]:
    if path == "stdlib":
        return stdlib_root(), "stdlib"
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise UserError(f"{label} does not exist; pass a folder, a .jsonl file, or 'stdlib'")
    if root.is_dir():
        return root, "folder"
    name = root.name
    if name.endswith((".jsonl.zst", ".ndjson.zst")):
        return root, "jsonl.zst"
    if root.suffix in (".jsonl", ".ndjson"):
        return root, "jsonl"
    if root.suffix == ".parquet":
        return root, "parquet"
    raise UserError(
        f"{label} is a file but not .jsonl, .jsonl.zst or .parquet; pass a folder, one of those, or 'stdlib'"
    )


def _stat_identity(relpath: str, path: Path) -> str:
    st = path.stat()
    return f"{relpath}:{st.st_size}:{st.st_mtime_ns}"


def _folder_files(root: Path, pattern: str, stdlib: bool, label: str) -> list[tuple[str, int]]:
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        raise UserError(f"--glob {pattern!r} must stay inside {root}; use a relative pattern without '..'")
    try:
        matches = sorted(root.glob(pattern))
    except (ValueError, NotImplementedError):
        raise UserError(f"--glob {pattern!r} is not a relative pattern; use one like '**/*.py'") from None
    files = []
    for path in matches:
        relpath = path.relative_to(root).as_posix()
        if not path.resolve().is_relative_to(root):  # a symlink (to a file or a folder) out of the corpus
            continue
        if path.is_file() and not (stdlib and is_stdlib_junk(relpath)):
            files.append((relpath, path.stat().st_size))
    if not files:
        raise UserError(f"no files in {root} match --glob {pattern!r}; check the pattern (e.g. '**/*.py')")
    return files


def _budgeted_files(files: list[tuple[str, int]], budget: int | None) -> list[tuple[str, int]]:
    """The files `take_subset` would choose by size (fixed hash order, so smaller budgets give prefixes)."""
    if budget is None:
        return files
    chosen, total = [], 0
    for relpath, size in sorted(files, key=lambda f: _unit_interval("autarky-subset", f[0])):
        if total >= budget:
            break
        chosen.append((relpath, size))
        total += size
    return sorted(chosen)


def _jsonl_ranges(path: Path, task_bytes: int) -> list[tuple[int, int, int]]:
    """(start, end, first line number) of line-aligned ranges of about `task_bytes`; one pass, 1 MB at a time."""
    size = path.stat().st_size
    ranges, start, first_line, line = [], 0, 1, 1
    pos, cut = 0, task_bytes
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            while cut < size and pos + len(block) > cut:
                newline = block.find(b"\n", cut - pos)
                if newline < 0:
                    break
                line_at_cut = line + block.count(b"\n", 0, newline + 1)
                ranges.append((start, pos + newline + 1, first_line))
                start, first_line = pos + newline + 1, line_at_cut
                cut = start + task_bytes
            line += block.count(b"\n")
            pos += len(block)
    if start < size or not ranges:
        ranges.append((start, size, first_line))
    return ranges


def plan_source(
    name: str, prefix: str, path: str, glob: str, budget: int | None, task_bytes: int, first_index: int
) -> list[Task]:
    """Cut one source into tasks, numbered from `first_index`, sharing `budget` bytes of text among them."""
    label = f"corpus {path}" if not prefix else f"source {name!r} ({path})"
    root, kind = source_kind(path, label)
    base = {"source": name, "prefix": prefix, "kind": kind, "root": str(root)}
    tasks: list[Task] = []
    if kind in ("stdlib", "folder"):
        files = _budgeted_files(_folder_files(root, glob, kind == "stdlib", label), budget)
        group: list[tuple[str, int]] = []
        for i, (relpath, size) in enumerate(files):
            group.append((relpath, size))
            if sum(s for _, s in group) >= task_bytes or i == len(files) - 1:
                identity = "|".join(_stat_identity(r, root / r) for r, _ in group)
                tasks.append(Task(first_index + len(tasks), files=tuple(r for r, _ in group),
                                  identity=identity, **base))
                group = []
        return tasks
    if kind == "parquet":
        return _plan_parquet(root, base, budget, task_bytes, first_index, label)
    identity = _stat_identity(root.name, root)
    if kind == "jsonl.zst":
        return [Task(first_index, budget=budget, identity=identity, **base)]
    remaining = budget
    for start, end, first_line in _jsonl_ranges(root, task_bytes):
        if remaining is not None and remaining <= 0:
            break
        tasks.append(Task(first_index + len(tasks), start=start, end=end, first_line=first_line,
                          budget=remaining, identity=f"{identity}:{start}-{end}", **base))
        if remaining is not None:
            remaining -= end - start
    return tasks


def _parquet_file(root: Path, label: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(root)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise UserError(f"{label} is not a readable Parquet file ({type(e).__name__}: {e})") from None
    if "text" not in pf.schema_arrow.names:
        raise UserError(f"{label} has no 'text' column; a Parquet source needs one (string)")
    kind = pf.schema_arrow.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise UserError(f"{label}'s 'text' column holds {kind}, not strings; a Parquet source needs string text")
    return pf


def _plan_parquet(root: Path, base: dict, budget: int | None, task_bytes: int, first: int, label: str) -> list[Task]:
    meta = _parquet_file(root, label).metadata
    identity = _stat_identity(root.name, root)
    tasks: list[Task] = []
    start, row, first_row, size, remaining = 0, 0, 0, 0, budget
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        size += rg.total_byte_size
        row += rg.num_rows
        if size >= task_bytes or g == meta.num_row_groups - 1:
            if remaining is not None and remaining <= 0:
                break
            tasks.append(Task(first + len(tasks), start=start, end=g + 1, first_row=first_row, budget=remaining,
                              identity=f"{identity}:{start}-{g + 1}", **base))
            if remaining is not None:
                remaining -= size
            start, first_row, size = g + 1, row, 0
    return tasks


def _jsonl_record(line: bytes, where: str) -> tuple[object, str]:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 (byte {e.start}); re-encode the file or remove the line") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e.msg}); fix the line or remove it") from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply to parse; flatten the record or remove the line") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise UserError(
            f"{where} has no string field 'text'; every JSONL line must look like {{\"text\": \"...\"}}"
        )
    return record.get("id"), record["text"]


def _jsonl_lines(stream: io.BufferedIOBase, first_line: int, length: int, limit: int, stats: ReadStats
                 ) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of non-blank lines in `length` bytes; lines longer than `limit` are skipped."""
    lineno, read = first_line, 0
    while length < 0 or read < length:
        line = stream.readline(limit + 1)
        if not line:
            return
        read += len(line)
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(_BLOCK)) and not rest.endswith(b"\n"):
                read += len(rest)
            read += len(rest)
            stats.oversized_skipped += 1  # a JSON record cannot be parsed in pieces, so it is skipped
        elif line.strip():
            yield lineno, line
        lineno += 1


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file, its frames one after another. zstandard's stream_reader ends quietly
    where a file is cut off (a half-copied download would build half a corpus); here that is a UserError. Input is
    fed in small pieces, so one call's output stays small however well the data compresses."""

    _FEED = 16 << 10

    def __init__(self, raw: io.BufferedIOBase, path: Path) -> None:
        import zstandard

        self._raw, self._path, self._new = raw, path, zstandard.ZstdDecompressor().decompressobj
        self._frame, self._in_frame, self._out = self._new(), False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._out:
            data = self._raw.read(self._FEED)
            if not data:
                if self._in_frame:
                    raise UserError(f"{self._path} ends inside a zstd frame (a truncated file?); copy it again")
                return 0
            pieces = []
            while data:
                if self._frame.eof:
                    self._frame = self._new()
                pieces.append(self._frame.decompress(data))
                data = self._frame.unused_data if self._frame.eof else b""
                self._in_frame = not self._frame.eof
            self._out = b"".join(pieces)
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def _read_jsonl(task: Task, limit: int, stats: ReadStats) -> Iterator[tuple[str, str]]:
    path = Path(task.root)
    with path.open("rb") as raw:
        if task.kind == "jsonl.zst":
            stream, length = io.BufferedReader(_ZstdFrames(raw, path), _BLOCK), -1
        else:
            raw.seek(task.start)
            stream, length = raw, task.end - task.start
        try:
            for lineno, line in _jsonl_lines(stream, task.first_line, length, limit, stats):
                doc_id, text = _jsonl_record(line, f"{path}:{lineno}")
                yield f"{path.name}:{lineno if doc_id is None else doc_id}", text
        except UnicodeDecodeError:
            raise UserError(f"corpus {path} is not a UTF-8 JSONL file; pass a folder or a .jsonl file") from None
        except Exception as e:
            if task.kind == "jsonl.zst" and type(e).__name__ == "ZstdError":
                raise UserError(f"{path} is not a readable zstd file ({e})") from None
            raise


def _read_parquet(task: Task) -> Iterator[tuple[str, str]]:
    path = Path(task.root)
    pf = _parquet_file(path, f"Parquet source {path}")
    columns = ["text", "id"] if "id" in pf.schema_arrow.names else ["text"]
    row = task.first_row
    for g in range(task.start, task.end):
        table = pf.read_row_group(g, columns=columns)
        texts = table.column("text").to_pylist()
        ids = table.column("id").to_pylist() if "id" in columns else [None] * len(texts)
        for text, doc_id in zip(texts, ids, strict=True):
            if isinstance(text, str) and text.strip():
                yield f"{path.name}:{row if doc_id is None else doc_id}", text
            row += 1


def _read_file(root: Path, relpath: str, limit: int, split: bool, stats: ReadStats) -> Iterator[tuple[str, str]]:
    path = root / relpath
    if path.stat().st_size <= limit:
        try:
            yield relpath, path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            stats.skipped_not_utf8.append(relpath)
        return
    if not split:
        stats.oversized_skipped += 1
        return
    stats.oversized_split += 1
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        part = 0
        while block := f.read(limit):
            try:
                text = decoder.decode(block, final=len(block) < limit)
            except UnicodeDecodeError:
                stats.skipped_not_utf8.append(relpath)
                return
            yield f"{relpath}#{part}", text
            part += 1


def read_task(task: Task, max_doc_bytes: int, split_oversized: bool, stats: ReadStats) -> Iterator[tuple[str, str]]:
    """(name, text) of the task's documents in input order, stopping once `task.budget` bytes are read."""
    if task.kind in ("stdlib", "folder"):
        root = Path(task.root)
        docs = (d for relpath in task.files for d in _read_file(root, relpath, max_doc_bytes, split_oversized, stats))
    elif task.kind == "parquet":
        docs = _read_parquet(task)
    else:
        docs = _read_jsonl(task, max_doc_bytes, stats)
    total = 0
    try:
        for name, text in docs:
            if task.budget is not None and total >= task.budget:
                return
            total += len(text.encode("utf-8")) if task.budget is not None else 0
            yield task.prefix + name, text
    except OSError as e:  # permissions, a file removed mid-build, an I/O error
        raise UserError(f"cannot read {e.filename or task.root} ({e.strerror or e}); fix or remove it") from None


def identity_digest(tasks: list[Task]) -> str:
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(f"{task.source}\0{task.prefix}\0{task.identity}\n".encode())
    return digest.hexdigest()

