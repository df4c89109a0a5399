"""One request's accounting, from its first byte to its one ledger row.

An `Exchange` is created once per request. It holds the key and team, the routing decision, the budget
reservation, the upstream attempts and the usage row, and it is the only thing that settles the reservation
and writes the row. Its three closing moves are idempotent, so every exit path can call them without counting:

- `settle(prompt, completion)`: charge what the upstream used against the reservation (once);
- `fail(status, error)`: mark the request failed; the first failure is the one the client saw;
- `finish()`: release a reservation nothing settled, then queue the ledger row and the metrics (once).

The gateway's ASGI endpoint calls `finish()` in a `finally` after the response went out, streamed or not,
so exactly one row exists per request however it ended: success, upstream failure, client gone, or a bug.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from autarky.gateway.accounting import Accounting
from autarky.gateway.auth import Admission, KeyRecord
from autarky.gateway.dispatch import Outcome
from autarky.gateway.ledger import Usage
from autarky.gateway.metrics import Metrics
from autarky.gateway.router import RouteDecision

# Request ids: a random per-process prefix plus a counter, unique across replicas without a syscall each.
_ID_PREFIX = secrets.token_hex(6)
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):012x}"


# What a chat template adds around the text: role markers and separators per message, and the assistant
# prefix the reply starts from. Generous for the templates in use (ChatML: 4 per message + 3).
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3


@dataclass(frozen=True, slots=True)
class Estimate:
    """The most a request can use: tokens (prompt + every choice at its full max_tokens) and their price."""

    usd: float
    tokens: int


def _text_tokens(value: object) -> int:
    # A token of the tokenizers in use covers about 3-4 bytes of text; 3 errs on the side of reserving more.
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return len(text.encode()) // 3 + 1


def _whole(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def estimate_request(body: dict, targets: Sequence, default_max_tokens: int) -> Estimate:  # noqa: C901
    """A reservation that covers what `body` can cost on any of `targets`: every prompt of a batched
    /v1/completions call, the chat template's tokens, `n` (or `best_of`) choices, each at its full max_tokens."""
    prompt, prompts = body.get("prompt"), 1
    if "messages" in body:
        messages = body.get("messages") or []
        prompt_tokens = _TOKENS_PER_REPLY + sum(
            _TOKENS_PER_MESSAGE + _text_tokens((m.get("content") or "") if isinstance(m, dict) else m)
            for m in messages)
        for extra in ("tools", "functions", "response_format"):
            if body.get(extra):
                prompt_tokens += _text_tokens(body[extra])
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        prompt_tokens = len(prompt)  # one prompt, already tokens
    elif isinstance(prompt, list) and prompt:
        prompts = len(prompt)
        prompt_tokens = sum(len(p) if isinstance(p, list) else _text_tokens(p) for p in prompt)
    else:
        prompt_tokens = _text_tokens(prompt or "")
    max_out = _whole(body.get("max_completion_tokens"), 0) or _whole(body.get("max_tokens"), default_max_tokens)
    choices = max(_whole(body.get("n"), 1), _whole(body.get("best_of"), 1))
    completion_tokens = prompts * choices * max_out
    usd = max((t.model_entry.cost(prompt_tokens, completion_tokens) for t in targets), default=0.0)
    return Estimate(usd, prompt_tokens + completion_tokens)


class Exchange:
    def __init__(self, accounting: Accounting, endpoint: str, metrics: Metrics | None = None,
                 request_id: str | None = None) -> None:
        self.accounting = accounting
        self.metrics = metrics
        self.started = time.perf_counter()
        self.usage = Usage(request_id=request_id or new_request_id(), ts=time.time(), endpoint=endpoint, status=0)
        self.key: KeyRecord | None = None
        self.decision: RouteDecision | None = None
        self.admission: Admission | None = None
        self.outcome = Outcome()  # the upstream attempts: target that answered, retries, failovers
        self.store_content = False  # the team opted in to storing prompts and completions
        self._settled = False
        self._failed = False
        self._finished = False

    @property
    def request_id(self) -> str:
        return self.usage.request_id

    @property
    def finished(self) -> bool:
        return self._finished

    # ---- what the request turned out to be ---------------------------------------------------------------

    def authenticated(self, key: KeyRecord, store_content: bool = False) -> None:
        self.key = key
        self.usage.key_id, self.usage.team = key.id or None, key.team
        self.store_content = store_content

    def routed(self, decision: RouteDecision) -> None:
        self.decision = decision
        self.usage.task = decision.task

    def audit(self, action: str, detail: dict) -> None:
        self.accounting.audit("gateway", action, detail)

    async def admit(self, estimate_usd: float, estimate_tokens: int = 0) -> None:
        """Rate limits and the budget (and token) reservation for the authenticated key; raises GatewayError."""
        assert self.key is not None, "authenticate before admitting"
        # Journaled in flight (status 0) before anything is reserved: if the gateway dies before the row is
        # final, the next start-up writes it as stopped and releases its reservation (if one was taken), so a
        # crash cannot shrink a budget for good.
        self.accounting.checkpoint(self.usage)
        self.admission = await self.accounting.admit(self.key, estimate_usd, estimate_tokens, self.request_id)
        self.usage.reserved_usd, self.usage.window = self.admission.reserved_usd, self.admission.window
        self.usage.reserved_tokens = self.admission.reserved_tokens

    def streaming(self) -> None:
        """The response is a stream that has started: status 200 until something says otherwise."""
        self.usage.stream = True
        self.usage.status = 200

    def succeeded(self) -> None:
        """The upstream answered and the response is built: 200, unless a failure was already recorded. The
        row is made durable now, before the response goes out: a client that got an answer has its row."""
        if not self._failed:
            self.usage.status = 200
        if self._settled and not self._finished:
            self.accounting.checkpoint(self.usage)

    # ---- closing: each idempotent ------------------------------------------------------------------------

    def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Charge the answering target's price for these tokens against the reservation (first call only)."""
        if self._settled or self._finished or self.outcome.target is None:
            return
        self._settled = True
        u, target = self.usage, self.outcome.target
        u.prompt_tokens, u.completion_tokens = prompt_tokens, completion_tokens
        u.model, u.provider = target.model, target.provider
        u.cost_usd = target.model_entry.cost(prompt_tokens, completion_tokens)
        self._attempts()
        if self.key is not None and self.admission is not None:
            self.accounting.settle(self.key, self.admission, u.cost_usd, prompt_tokens + completion_tokens)
        if u.stream:  # a stream settles at its end, before its last bytes: durable from here
            self.accounting.checkpoint(u)

    def fail(self, status: int, error: str) -> None:
        """Mark the request failed with what the client saw; later failures (and failures after finish) are
        no-ops, so a mid-stream upstream error is not overwritten by the disconnect that follows it."""
        if self._failed or self._finished:
            return
        self._failed = True
        self.usage.status, self.usage.error = status, error

    def finish(self) -> None:
        """The one ledger row (queued, never awaited) and the metrics; a reservation nothing settled is
        released, since a request that got no answer costs nothing. Later calls are no-ops."""
        if self._finished:
            return
        self._finished = True
        u = self.usage
        if not self._settled:
            self._attempts()
            if self.key is not None and self.admission is not None:
                self.accounting.settle(self.key, self.admission, 0.0, 0)
        elapsed = time.perf_counter() - self.started
        u.latency_ms = elapsed * 1000
        self.accounting.record(u)
        m = self.metrics
        if m is None:
            return
        m.requests.labels(u.endpoint, u.model or "", str(u.status)).inc()
        m.latency.labels(u.endpoint).observe(elapsed)
        if u.model:
            m.tokens.labels(u.model, "prompt").inc(u.prompt_tokens)
            m.tokens.labels(u.model, "completion").inc(u.completion_tokens)
            if u.cost_usd:
                m.cost.labels(u.model).inc(u.cost_usd)

    def _attempts(self) -> None:
        self.usage.retries, self.usage.failovers = self.outcome.retries, self.outcome.failovers

    # ---- response headers --------------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """What served the request and why (after a successful upstream call)."""
        target, decision = self.outcome.target, self.decision
        assert target is not None and decision is not None
        notes = self.outcome.notes
        reason = decision.reason if not notes else decision.reason + "; " + "; ".join(notes)
        if target.evidence:
            reason += f"; evidence {target.model}: {target.evidence}"
        return {"x-autarky-model": target.model, "x-autarky-provider": target.provider,
                "x-autarky-route-reason": _ascii(reason), "x-autarky-request-id": self.request_id,
                "x-autarky-failovers": str(self.outcome.failovers)}

    def error_headers(self) -> dict[str, str]:
        headers = {"x-autarky-request-id": self.request_id}
        if self.decision is not None:
            headers["x-autarky-route-reason"] = _ascii(self.decision.reason)
        return headers


def _ascii(value: str) -> str:
    return value.encode("ascii", "replace").decode()
