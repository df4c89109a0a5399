"""Prometheus metrics, one registry per app so several gateways can live in one process (tests, demo)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from autarky.gateway.breaker import STATE_NAMES, Breaker

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("autarky_gateway_requests", "Requests by outcome", ["endpoint", "model", "status"],
                                registry=r)
        self.latency = Histogram("autarky_gateway_request_seconds", "End-to-end request latency", ["endpoint"],
                                 buckets=_BUCKETS, registry=r)
        self.tokens = Counter("autarky_gateway_tokens", "Tokens by model and direction", ["model", "direction"],
                              registry=r)
        self.cost = Counter("autarky_gateway_cost_usd", "Spend in USD by model", ["model"], registry=r)
        self.retries = Counter("autarky_gateway_retries", "Retries by provider", ["provider"], registry=r)
        self.failovers = Counter("autarky_gateway_failovers", "Failovers away from a provider", ["provider"],
                                 registry=r)
        self.breaker = Gauge("autarky_gateway_breaker_state", "0 closed, 1 open, 2 half-open", ["provider"],
                             registry=r)
        self.ledger_pending = Gauge("autarky_gateway_ledger_pending", "Usage rows waiting for the writer",
                                    registry=r)

    def render(self, breakers: dict[str, Breaker], ledger_pending: int) -> bytes:
        for name, b in breakers.items():
            self.breaker.labels(name).set(b.state)
        self.ledger_pending.set(ledger_pending)
        return generate_latest(self.registry)


__all__ = ["Metrics", "STATE_NAMES"]
