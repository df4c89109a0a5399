"""A circuit breaker per provider: closed -> open after N consecutive failures -> half-open after a cooldown,
where one probe request at a time decides whether to close again or re-open."""

from __future__ import annotations

import time

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half_open"}


class Breaker:
    __slots__ = ("failure_threshold", "cooldown_s", "state", "failures", "opened_at", "probing", "clock")

    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 10.0, clock=time.monotonic) -> None:  # noqa: ANN001
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.clock = clock

    def allow(self) -> bool:
        """May a request go to this provider now? In half-open, only one probe at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() - self.opened_at < self.cooldown_s:
                return False
            self.state = HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.state = CLOSED
        self.failures = 0
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
            self.state = OPEN
            self.opened_at = self.clock()
            self.probing = False

    def release(self) -> None:
        """The request ended without telling us about the provider (client gave up, 4xx)."""
        self.probing = False
