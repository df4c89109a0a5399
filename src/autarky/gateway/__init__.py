"""The gateway stage: one OpenAI/Anthropic-compatible endpoint in front of every model, routing each product
task by policy, score and cost, with virtual keys, limits, budgets, a usage ledger and a hash-chained audit log.

    from autarky.gateway import start_gateway, start_gateway_process
    gateway, server = start_gateway("gateway.toml")     # in-process, background thread; server.url
    ...; server.stop()                                   # drains in-flight requests, flushes the ledger
    proc, url = start_gateway_process("gateway.toml")    # `autarky gateway` as a subprocess
    ...; proc.terminate(); proc.wait()                   # SIGTERM: same graceful shutdown

Inside: config (gateway.toml), routes (routing table, hot reload), router (policy → RouteDecision, narrowed by
capabilities: what a request needs and each model supports), translate/ (OpenAI ↔ Anthropic), dispatch
(retries, failover, breakers), providers/ (egress), exchange (one request's accounting over the `Accounting`
interface in accounting), streaming, auth (keys, limits), ledger, audit, admin, metrics, errors, app, server.
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "GatewayConfig": "config",
    "load_config": "config",
    "parse_config": "config",
    "Gateway": "app",
    "run_gateway": "server",
    "start_gateway": "server",
    "start_gateway_process": "server",
    "ServerThread": "server",
    "wait_for_http": "server",
    "free_port": "server",
    "Exchange": "exchange",
    "Accounting": "accounting",
    "MemoryAccounting": "accounting",
    "GatewayError": "errors",
})
