"""The narrow interface a request's exchange settles through: limits and budgets, the ledger and the audit log.

`LedgerAccounting` is the gateway's (the key limiter and the background ledger writer); `MemoryAccounting` is an
in-memory stand-in for tests, in the spirit of httpx's `MockTransport`: pass it to `Gateway(config,
accounting=...)` or to an `Exchange`, then read back `rows`, `audits` and the reservations still open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from autarky.gateway.auth import Admission, KeyRecord, Limiter
from autarky.gateway.errors import GatewayError
from autarky.gateway.ledger import Ledger, Usage


class Accounting(Protocol):
    async def admit(self, key: KeyRecord, estimate_usd: float, estimate_tokens: int = 0,
                    request_id: str | None = None) -> Admission:
        """Check the key's rate limits and reserve `estimate_usd` of its budget and `estimate_tokens` of its
        token rate (the request's worst case), under `request_id`; raises GatewayError (429)."""

    def settle(self, key: KeyRecord, admission: Admission, cost_usd: float, tokens: int) -> None:
        """Turn the reservation into the actual cost and count the tokens (cost 0 and no tokens: a release)."""

    def record(self, usage: Usage) -> None:
        """Queue the request's one ledger row; never waits on a database."""

    def checkpoint(self, usage: Usage) -> None:
        """Make the row durable as it stands, before the client gets its answer (a crash then loses nothing)."""

    def audit(self, actor: str, action: str, detail: dict) -> None:
        """Queue an audit-log entry (policy decisions)."""


class LedgerAccounting:
    def __init__(self, limiter: Limiter, ledger: Ledger) -> None:
        self.limiter = limiter
        self.ledger = ledger

    async def admit(self, key: KeyRecord, estimate_usd: float, estimate_tokens: int = 0,
                    request_id: str | None = None) -> Admission:
        return await self.limiter.admit(key, estimate_usd, estimate_tokens, request_id)

    def settle(self, key: KeyRecord, admission: Admission, cost_usd: float, tokens: int) -> None:
        # Keys without an id (anonymous, master) have no counters; shared limits settle from the ledger row.
        if key.id:
            self.limiter.settle_local(key.id, admission, cost_usd, tokens)

    def record(self, usage: Usage) -> None:
        self.ledger.record(usage)

    def checkpoint(self, usage: Usage) -> None:
        self.ledger.checkpoint(usage)

    def audit(self, actor: str, action: str, detail: dict) -> None:
        self.ledger.audit(actor, action, detail)


@dataclass
class MemoryAccounting:
    """Accounting in lists: every admission is granted unless `refuse` is set (then it is raised instead)."""

    refuse: GatewayError | None = None
    rows: list[Usage] = field(default_factory=list)
    audits: list[tuple[str, str, dict]] = field(default_factory=list)
    settlements: list[tuple[str, float, float, int]] = field(default_factory=list)  # (key id, reserved, cost, tokens)
    checkpoints: list[str] = field(default_factory=list)  # request ids, in order
    open_reservations: int = 0

    async def admit(self, key: KeyRecord, estimate_usd: float, estimate_tokens: int = 0,
                    request_id: str | None = None) -> Admission:
        if self.refuse is not None:
            raise self.refuse
        self.open_reservations += 1
        return Admission(estimate_usd, int(time.time() // 60), estimate_tokens)

    def settle(self, key: KeyRecord, admission: Admission, cost_usd: float, tokens: int) -> None:
        self.open_reservations -= 1
        self.settlements.append((key.id, admission.reserved_usd, cost_usd, tokens))

    def record(self, usage: Usage) -> None:
        self.rows.append(usage)

    def checkpoint(self, usage: Usage) -> None:
        self.checkpoints.append(usage.request_id)

    def audit(self, actor: str, action: str, detail: dict) -> None:
        self.audits.append((actor, action, detail))

    def rows_for(self, request_id: str) -> list[Usage]:
        return [u for u in self.rows if u.request_id == request_id]
