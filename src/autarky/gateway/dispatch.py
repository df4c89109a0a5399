"""Sending one request along a plan: breaker check, retries with jittered backoff (honouring Retry-After),
then failover to the next target. Streams fail over only until their first chunk has arrived; a stream's
breaker verdict waits for its end (streaming.py), so streams that die after the first chunk open it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from autarky.contracts.wire import ContextOverflow
from autarky.gateway.breaker import Breaker
from autarky.gateway.config import RetryConfig
from autarky.gateway.errors import GatewayError, upstream_failed
from autarky.gateway.metrics import Metrics
from autarky.gateway.providers import Provider, UpstreamError
from autarky.gateway.router import Target


@dataclass(slots=True)
class Outcome:
    target: Target | None = None
    retries: int = 0
    failovers: int = 0
    notes: list[str] = field(default_factory=list)


def client_error(err: UpstreamError) -> GatewayError:
    """An upstream 4xx that is the client's fault: pass its status and message through."""
    return GatewayError(err.status or 400, err.message, type="invalid_request_error", code="upstream_rejected")


class Dispatcher:
    def __init__(self, providers: dict[str, Provider], breakers: dict[str, Breaker], retry: RetryConfig,
                 metrics: Metrics) -> None:
        self.providers = providers
        self.breakers = breakers
        self.retry = retry
        self.metrics = metrics

    def _overflow(self, err: UpstreamError) -> bool:
        """Did the upstream refuse the request as longer than its context? Another deployment may hold it."""
        if err.status not in (400, 413, 422) or not err.body:
            return False
        try:
            body = orjson.loads(err.body)
        except orjson.JSONDecodeError:
            body = err.body[:2000].decode("utf-8", "replace")
        return ContextOverflow.from_body(body) is not None

    def _delay(self, attempt: int, err: UpstreamError) -> float | None:
        """Seconds to wait before retrying, or None to fail over now."""
        if err.retry_after is not None:
            if err.retry_after > self.retry.max_retry_after_s:
                return None
            return err.retry_after + random.uniform(0, 0.05)
        cap = min(self.retry.backoff_max_s, self.retry.backoff_base_s * 2**attempt)
        return random.uniform(cap / 2, cap)  # jitter spreads retries from many clients

    async def _attempts(self, targets: tuple[Target, ...], outcome: Outcome, call,  # noqa: ANN001
                        settle_on_success: bool = True) -> object:
        last: UpstreamError | None = None
        tried = 0
        last_provider = ""
        skipped: list[str] = []
        noted = 0
        for target in targets:
            breaker = self.breakers[target.provider]
            if not breaker.allow():
                skipped.append(target.provider)
                continue
            if tried or len(skipped) > noted:
                # Routed around an open breaker counts as a failover too: the header, the count and the
                # ledger row all say the request did not go where the route put it first.
                outcome.failovers += 1
                if tried:
                    self.metrics.failovers.labels(last_provider).inc()
                    outcome.notes.append(f"failover from {last_provider} ({_short(last)})")
                for name in skipped[noted:]:
                    self.metrics.failovers.labels(name).inc()
                    outcome.notes.append(f"skipped {name} (circuit open)")
                noted = len(skipped)
            tried += 1
            last_provider = target.provider
            for attempt in range(self.retry.max_retries + 1):
                if attempt and not breaker.allow():
                    break
                try:
                    result = await call(target)
                except UpstreamError as err:
                    if err.status == 404 or self._overflow(err):
                        # this provider lacks the model, or its context is too short: the next may not be
                        breaker.release()
                        last = err
                        break
                    if not err.retryable:
                        breaker.release()
                        raise client_error(err) from err
                    breaker.failure()
                    last = err
                    if attempt == self.retry.max_retries:
                        break
                    delay = self._delay(attempt, err)
                    if delay is None:
                        break
                    outcome.retries += 1
                    self.metrics.retries.labels(target.provider).inc()
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    breaker.release()  # our own error, or the client went away: not the provider's fault
                    raise
                if settle_on_success:  # a stream's verdict comes at its end (ExchangeStream)
                    breaker.success()
                outcome.target = target
                return result
        if last is not None and not last.retryable:  # e.g. every deployment's context was too short
            raise client_error(last)
        if last is None:
            raise GatewayError(503, f"every allowed provider is unavailable (circuit open: {', '.join(skipped)}); "
                               "retry shortly", type="api_error", code="providers_unavailable",
                               headers={"retry-after": "1"})
        status = 504 if last.status == 504 else 502
        raise upstream_failed(f"all {tried} allowed candidate(s) failed; last: {last.message}", status=status)

    async def complete(self, targets: tuple[Target, ...], body: dict, endpoint: str, outcome: Outcome) -> dict:
        async def call(target: Target) -> dict:
            return await self.providers[target.provider_config.kind].complete(target, body, endpoint)

        return await self._attempts(targets, outcome, call)

    async def open_stream(self, targets: tuple[Target, ...], body: dict, endpoint: str,
                          outcome: Outcome) -> tuple[list[dict], AsyncIterator[list[dict]]]:
        """The first batch of chunks and the rest of the stream; until the first batch, it can fail over."""

        async def call(target: Target) -> tuple[list[dict], AsyncIterator[list[dict]]]:
            stream = self.providers[target.provider_config.kind].stream(target, body, endpoint)
            try:
                first = await stream.__anext__()
            except StopAsyncIteration as exc:
                raise UpstreamError(f"{target.provider} sent an empty stream", status=502) from exc
            except BaseException:
                await stream.aclose()
                raise
            return first, stream

        return await self._attempts(targets, outcome, call, settle_on_success=False)


def _short(err: UpstreamError | None) -> str:
    if err is None:
        return "?"
    return str(err.status) if err.status else "error"
