"""Sending one request along a plan: breaker check, retries with jittered backoff (honouring Retry-After),
then failover to the next target. Streams fail over only until their first chunk has arrived."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

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

    def _delay(self, attempt: int, err: UpstreamError) -> float | None:
        """Seconds to wait before retrying, or None to fail over now."""
        if err.retry_after is not None:
            if err.retry_after > self.retry.max_retry_after_s:
                return None
            return err.retry_after + random.uniform(0, 0.05)
        cap = min(self.retry.backoff_max_s, self.retry.backoff_base_s * 2**attempt)
        return random.uniform(cap / 2, cap)  # jitter spreads retries from many clients

    async def _attempts(self, targets: tuple[Target, ...], outcome: Outcome, call) -> object:  # noqa: ANN001
        last: UpstreamError | None = None
        tried = 0
        last_provider = ""
        skipped: list[str] = []
        for target in targets:
            breaker = self.breakers[target.provider]
            if not breaker.allow():
                skipped.append(target.provider)
                continue
            if tried:
                outcome.failovers += 1
                self.metrics.failovers.labels(last_provider).inc()
                outcome.notes.append(f"failover from {last_provider} ({_short(last)})")
            tried += 1
            last_provider = target.provider
            for attempt in range(self.retry.max_retries + 1):
                if attempt and not breaker.allow():
                    break
                try:
                    result = await call(target)
                except UpstreamError as err:
                    if err.status == 404:  # this provider lacks the model: the next candidate may have it
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
                breaker.success()
                outcome.target = target
                return result
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

        return await self._attempts(targets, outcome, call)


def _short(err: UpstreamError | None) -> str:
    if err is None:
        return "?"
    return str(err.status) if err.status else "error"
