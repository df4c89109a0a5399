"""The routing table: product task -> ranked candidates, written by `autarky eval routes` (or by hand); its
schema, reader and writer are `autarky.contracts.routes`.

The gateway checks the file's mtime at most every `poll_s` and swaps in a new table atomically; a broken
edit keeps the last good table (and says so) rather than taking traffic down.
"""

from __future__ import annotations

import logging
import os
import time

from autarky.contracts.routes import Candidate, RoutingTable, TaskRoute, load_routing_table
from autarky.errors import UserError

__all__ = ["Candidate", "RoutesWatcher", "RoutingTable", "TaskRoute", "load_routing_table"]

log = logging.getLogger("autarky.gateway")
_MISSING = "does not exist (yet); serving the last table loaded, else the config's task lists"


class RoutesWatcher:
    """Holds the current table; `current()` is cheap and reloads when the file changed."""

    def __init__(self, path: str | None, poll_s: float = 1.0, on_reload=None) -> None:  # noqa: ANN001
        self.path = path
        self.on_reload = on_reload  # called with (generation, error or None) after each reload attempt
        self.poll_s = poll_s
        self.generation = 0
        self.table = RoutingTable()
        self.last_error: str | None = None
        self._mtime: float | None = None
        self._checked = 0.0
        if path and os.path.exists(path):
            self.table = load_routing_table(path)
            self._mtime = os.stat(path).st_mtime_ns
            self.generation = 1
        elif path:  # not written yet (the eval stage runs later): start from the config's task lists
            self.last_error = f"routing table {path} {_MISSING}"
            log.warning(self.last_error)

    def current(self) -> RoutingTable:
        if self.path is not None:
            now = time.monotonic()
            if now - self._checked >= self.poll_s:
                self._checked = now
                self.maybe_reload()
        return self.table

    def maybe_reload(self) -> bool:
        """Reload if the file's mtime changed; True when a new table was swapped in."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            self.last_error = f"routing table {self.path} {_MISSING}"
            return False
        except OSError as exc:
            self.last_error = f"routing table unreadable: {exc}"
            return False
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            self.table = load_routing_table(self.path)
        except UserError as exc:
            self.last_error = exc.message
            log.error("keeping the previous routing table: %s", exc.message)
            if self.on_reload:
                self.on_reload(self.generation, exc.message)
            return False
        self.last_error = None
        self.generation += 1
        log.info("routing table reloaded from %s (generation %d)", self.path, self.generation)
        if self.on_reload:
            self.on_reload(self.generation, None)
        return True
