"""The usage ledger: one row per request, written by a background thread in batches.

Requests only append to an in-memory deque (no database wait on the hot path). The writer thread commits
usage rows, spend settlement (reservation -> actual cost) and token counts, and queued audit entries in one
transaction per batch; a failed batch is retried, never dropped, and `close()` flushes everything.
A row is also made durable in a local journal (journal.py) before its response completes, so a killed gateway
loses nothing: the next start-up replays what the database is missing.

A killed gateway must not shrink budgets for good either. Each request is journaled in flight (status 0) before
its budget is reserved, and with shared limits each reservation is a row of `gateway_reservations`, deleted
when its request's usage row is written (its amount subtracted from the key's reserved total). Replaying a dead
gateway's journal therefore writes its in-flight requests as stopped (status 500, no cost) and releases
exactly the reservations that exist: at the next start-up on that host, or within a minute by a live replica
sharing the host's journal folder. Reservations older than `reservation_ttl_s` are released as a last resort
(a gateway that died on a host where none starts again).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, select, text
from sqlalchemy.exc import SQLAlchemyError

from autarky.errors import UserError
from autarky.gateway import audit
from autarky.gateway.journal import Journal, journal_dir, replay_orphans
from autarky.store.gateway_tables import gateway_rate_windows, gateway_reservations, gateway_usage

log = logging.getLogger("autarky.gateway")


@dataclass(slots=True)
class Usage:
    request_id: str
    ts: float
    endpoint: str
    status: int
    key_id: str | None = None
    team: str | None = None
    task: str | None = None
    model: str | None = None
    provider: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    retries: int = 0
    failovers: int = 0
    error: str | None = None
    content: str | None = None
    # Not stored in the usage row: settlement of the key's reservation and rate window.
    reserved_usd: float = 0.0
    window: int = 0
    reserved_tokens: int = 0


_ROW_FIELDS = [c.name for c in gateway_usage.columns if c.name != "id"]
# Text columns and their lengths (None: unbounded). A value the database refuses would fail its whole batch
# again and again, and every row queued behind it: PostgreSQL refuses a NUL character in text (an upstream's
# error message can carry one) and a string longer than its column.
_TEXT_FIELDS = {c.name: getattr(c.type, "length", None) for c in gateway_usage.columns
                if c.name != "id" and c.type.python_type is str}


def _storable(row: dict) -> dict:
    for name, length in _TEXT_FIELDS.items():
        value = row[name]
        if value is not None:
            if "\x00" in value:
                value = value.replace("\x00", "\ufffd")
            row[name] = value[:length] if length else value
    return row
# The row of a request the gateway was killed under (found in flight in a dead gateway's journal): no answer
# went out, so it costs nothing, and the budget and tokens it had reserved are released with it.
STOPPED_STATUS = 500
STOPPED_ERROR = "the gateway stopped before this request finished (row recovered from its journal)"


class Ledger:
    def __init__(self, engine: Engine, flush_s: float = 0.2, batch: int = 2000, shared: bool = False,
                 journal: bool = True, reservation_ttl_s: float = 3600.0) -> None:
        self.engine = engine
        self.reservation_ttl_s = reservation_ttl_s
        directory = journal_dir(engine) if journal else None
        try:
            self.journal = Journal(directory) if directory is not None else None
        except OSError as exc:
            raise UserError(f"cannot write the ledger journal in {directory}: {exc} (set AUTARKY_HOME to a "
                            "writable folder)") from exc
        self.flush_s = flush_s
        self.batch = batch
        self.shared = shared
        self._usage: deque[Usage] = deque()
        self._audit: deque[tuple[str, str, dict]] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()  # one flush at a time (writer thread vs close())
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failed_batches = 0
        self._last_cleanup = 0.0

    def record(self, usage: Usage) -> None:
        """Queue the row for the database, after making its final form durable in the journal."""
        if self.journal is not None:
            self.journal.append(usage)
        self._usage.append(usage)

    def checkpoint(self, usage: Usage) -> None:
        """Make the row durable as it stands (the upstream answered; the response is about to go out)."""
        if self.journal is not None:
            self.journal.append(usage)

    def audit(self, actor: str, action: str, detail: dict) -> None:
        self._audit.append((actor, action, detail))

    @property
    def pending(self) -> int:
        return len(self._usage) + len(self._audit)

    def start(self) -> None:
        if self.journal is not None:
            replay_orphans(self.journal.directory, self._replay)
        if self.shared:
            self.expire_reservations()
        self._thread = threading.Thread(target=self._run, name="autarky-ledger", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the writer and flush everything still queued."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            if not self.flush():
                time.sleep(0.1)
        if self.pending:
            log.error("ledger: %d entries could not be written before shutdown (kept in the journal for the "
                      "next start)", self.pending)
        if self.journal is not None:
            self.journal.close()

    def _replay(self, journaled: list[dict]) -> None:
        """Write the journaled rows the database does not have (by request id: replaying twice is harmless)."""
        names = {f.name for f in dataclasses.fields(Usage)}
        rows = [Usage(**{k: v for k, v in d.items() if k in names}) for d in journaled]
        for u in rows:
            if u.status == 0:  # journaled at admission and never finished: the gateway died under it
                u.status, u.error = STOPPED_STATUS, STOPPED_ERROR
        ids = [u.request_id for u in rows]
        present: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                present.update(conn.execute(select(gateway_usage.c.request_id)
                                            .where(gateway_usage.c.request_id.in_(ids[i:i + 500]))).scalars())
        missing = [u for u in rows if u.request_id not in present]
        for i in range(0, len(missing), self.batch):
            self._write(missing[i:i + self.batch], [])
        if missing:
            log.warning("ledger: recovered %d rows from the journal (a gateway stopped before writing them)",
                        len(missing))

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if self.journal is not None:
                self.journal.sync()
            while self.pending and not self._stop:
                if not self.flush():
                    time.sleep(min(5.0, self.flush_s * 5))  # database trouble: back off, keep the rows
                    break
            if self.shared and time.monotonic() - self._last_cleanup > 60:
                self._cleanup_windows()
                if self.journal is not None:
                    # A replica killed beside this one (same host, same journal folder) left rows and
                    # reservations behind: recover them now rather than at its next start.
                    self._replay_orphans()
                try:
                    self.expire_reservations()
                except SQLAlchemyError as exc:
                    log.warning("ledger: expiring old reservations failed, will retry: %s", exc)

    def flush(self) -> bool:
        """Write one batch; True on success (or nothing to do). Rows stay queued on failure."""
        with self._lock:
            rows = [self._usage.popleft() for _ in range(min(self.batch, len(self._usage)))]
            entries = [self._audit.popleft() for _ in range(min(self.batch, len(self._audit)))]
            if not rows and not entries:
                return True
            try:
                try:
                    self._write(rows, entries)
                except audit.AuditKeyMismatch as exc:
                    # The chain's key changed under this gateway: usage must not stop with it. The audit
                    # entries wait (queued, not lost) until the operator restores the key and restarts.
                    log.error("ledger: audit entries held back: %s", exc)
                    self._audit.extendleft(reversed(entries))
                    entries = []
                    self._write(rows, entries)
            except SQLAlchemyError as exc:
                self.failed_batches += 1
                log.warning("ledger: batch of %d rows failed, will retry: %s", len(rows), exc)
                self._usage.extendleft(reversed(rows))
                self._audit.extendleft(reversed(entries))
                return False
            self.written += len(rows)
            if self.journal is not None and rows:
                self.journal.written(u.request_id for u in rows)
            return True

    def _write(self, rows: list[Usage], entries: list[tuple[str, str, dict]]) -> None:
        spend: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        tokens: dict[tuple[str, int], int] = defaultdict(int)
        for u in rows:
            if u.key_id is not None:
                spend[u.key_id][0] += u.cost_usd
                # Admission reserved `reserved_tokens` in the window already: settle it to the actual count.
                tokens[(u.key_id, u.window)] += u.prompt_tokens + u.completion_tokens - u.reserved_tokens
        with self.engine.begin() as conn:
            if rows:
                conn.execute(gateway_usage.insert(), [_storable({f: getattr(u, f) for f in _ROW_FIELDS}) for u in rows])
            if self.shared:  # local mode reserves in memory only
                for key_id, usd in self._release(conn, [u.request_id for u in rows if u.key_id is not None]):
                    spend[key_id][1] += usd
            if spend:
                conn.execute(
                    text("UPDATE gateway_keys SET spent_usd = spent_usd + :c, reserved_usd = reserved_usd - :r "
                         "WHERE id = :k"),
                    [{"k": k, "c": c, "r": r} for k, (c, r) in spend.items()],
                )
            if self.shared and tokens:
                conn.execute(
                    text("UPDATE gateway_rate_windows SET tokens = tokens + :t WHERE key_id = :k AND \"window\" = :w"),
                    [{"k": k, "w": w, "t": t} for (k, w), t in tokens.items()],
                )
            if entries:
                audit.append_in(conn, entries)

    @staticmethod
    def _release(conn: Connection, request_ids: list[str]) -> list[tuple[str, float]]:
        """Delete these requests' reservation rows; (key, usd) of each that existed, to subtract from the key."""
        held = []
        for i in range(0, len(request_ids), 500):
            held += conn.execute(delete(gateway_reservations)
                                 .where(gateway_reservations.c.request_id.in_(request_ids[i:i + 500]))
                                 .returning(gateway_reservations.c.key_id, gateway_reservations.c.usd)).all()
        return [(r.key_id, r.usd) for r in held]

    def expire_reservations(self, now: float | None = None) -> int:
        """Release reservations older than `reservation_ttl_s`: the backstop for a gateway that died on a host
        where none starts again (its journal is there). A request that outlives it is charged, not released."""
        cutoff = (time.time() if now is None else now) - self.reservation_ttl_s
        with self.engine.begin() as conn:
            ids = list(conn.execute(select(gateway_reservations.c.request_id)
                                    .where(gateway_reservations.c.created_at < cutoff)).scalars())
            released: dict[str, float] = defaultdict(float)
            for key_id, usd in self._release(conn, ids):
                released[key_id] += usd
            if released:
                conn.execute(text("UPDATE gateway_keys SET reserved_usd = reserved_usd - :r WHERE id = :k"),
                             [{"k": k, "r": r} for k, r in released.items()])
        if ids:
            log.warning("ledger: released %d budget reservations older than %g s", len(ids), self.reservation_ttl_s)
        return len(ids)

    def _replay_orphans(self) -> None:
        try:
            replay_orphans(self.journal.directory, self._replay)  # type: ignore[union-attr]
        except SQLAlchemyError as exc:  # the segment stays for the next try
            log.warning("ledger: replaying a stopped gateway's journal failed, will retry: %s", exc)

    def _cleanup_windows(self) -> None:
        self._last_cleanup = time.monotonic()
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(gateway_rate_windows).where(gateway_rate_windows.c.window < time.time() // 60 - 2))
        except SQLAlchemyError as exc:
            log.warning("ledger: rate-window cleanup failed: %s", exc)

