"""The ledger's write-ahead journal: acknowledged means recorded, even when the gateway is killed.

The ledger writes to the database in batches, off the request path; a batch still in memory dies with the
process. So each usage row is also appended to a local journal file before the client gets its response
(`Exchange` checkpoints the row once the upstream answered) and again in its final form. The append is one
write(2) to the kernel, which survives the process (SIGKILL, OOM kill, a crash); the ledger's writer thread
fdatasyncs the journal every flush interval, so a machine crash can lose at most the rows of the last
interval. (An fdatasync per request would put a disk flush on the event loop: it cut throughput four-fold.)
A segment is deleted once every row in it is in the database; a segment left behind by a process that died is
replayed at the next start-up, inserting the rows the database does not have yet (by request id, so a replay
twice, or of rows that were written just before the crash, changes nothing).

Layout: AUTARKY_HOME/ledger-journal/<store digest>/<segment>.jsonl; each live segment is flock'd by the process
that writes it, so a replay never touches the segment of a gateway still running beside it (PostgreSQL
replicas on one host share the folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import orjson
from sqlalchemy import Engine

from autarky.paths import autarky_home


class Row(Protocol):
    """A usage row (a dataclass instance; ledger.Usage), as far as the journal needs to know it."""

    request_id: str

SEGMENT_BYTES = 4 * 1024 * 1024


def journal_dir(engine: Engine) -> Path | None:
    """Where this store's journal lives; None for an in-memory database (nothing outlives it to replay into)."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and (not url.database or url.database == ":memory:"):
        return None
    digest = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return autarky_home() / "ledger-journal" / digest


class _Segment:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.size = 0
        self.pending: set[str] = set()  # request ids in this segment whose row is not in the database yet

    def close(self, remove: bool) -> None:
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


class Journal:
    """Segments are created on the first row after the previous ones emptied, and deleted as soon as all their
    rows are in the database, so a quiet or closed gateway leaves no file behind."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # fail at start-up, not on the first request
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []

    def _new_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _Segment(self.directory / f"{os.getpid()}-{secrets.token_hex(6)}.jsonl")

    def append(self, usage: Row) -> None:
        """Append the row's current state (one write: from here it outlives this process)."""
        fields = dataclasses.fields(usage)  # type: ignore[arg-type]
        line = orjson.dumps({f.name: getattr(usage, f.name) for f in fields}) + b"\n"
        with self._lock:
            if not self._segments or self._segments[-1].size > SEGMENT_BYTES:
                self._segments.append(self._new_segment())
            segment = self._segments[-1]
            os.write(segment.fd, line)
            segment.size += len(line)
            segment.pending.add(usage.request_id)

    def sync(self) -> None:
        """Flush the journal to the disk (the writer thread, once per flush interval; outside the lock, so
        requests never wait on the disk)."""
        with self._lock:
            fds = [segment.fd for segment in self._segments]
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile
                os.fdatasync(fd)

    def written(self, request_ids: Iterable[str]) -> None:
        """These rows are in the database: segments with nothing else pending are deleted."""
        ids = set(request_ids)
        with self._lock:
            keep = []
            for segment in self._segments:
                segment.pending -= ids
                if segment.pending:
                    keep.append(segment)
                else:
                    segment.close(remove=True)
            self._segments = keep

    def close(self) -> None:
        """Stop journaling; segments whose rows are all in the database are deleted, the rest kept for replay."""
        with self._lock:
            for segment in self._segments:
                segment.close(remove=not segment.pending)
            self._segments = []
        with contextlib.suppress(OSError):
            self.directory.rmdir()  # only if empty: nothing left to replay


def replay_orphans(directory: Path, replay: Callable[[list[dict[str, Any]]], None]) -> None:
    """Hand the last state of every row in each segment no live process holds to `replay` (which inserts what
    the database lacks), then delete the segment. A segment whose replay raises is kept for the next start."""
    for path in sorted(directory.glob("*.jsonl")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running gateway's segment
            rows: dict[str, dict[str, Any]] = {}
            with os.fdopen(os.dup(fd), "rb") as f:
                for line in f:
                    with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):  # a torn last line
                        data = orjson.loads(line)
                        rows[data["request_id"]] = data
            if rows:
                replay(list(rows.values()))
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
