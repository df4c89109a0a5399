"""`autarky gateway`: one OpenAI/Anthropic-compatible endpoint in front of every model.

Modules: config (gateway.toml), routes (routing table + hot reload), router (policy filter + order),
dispatch (retries, failover, breaker use), providers/ (OpenAI- and Anthropic-kind egress), translate,
streaming, auth (keys, limits, budgets), ledger (usage rows), audit (hash chain), admin (HTTP admin API),
metrics, errors, app (the Starlette app), server (running it), drill (traffic bursts), fake_upstream (a
misbehaving test upstream), commands (CLI).

Running it from Python (the demo does this):

    from autarky.gateway.server import start_gateway, start_gateway_process
    gateway, server = start_gateway("gateway.toml")        # in-process, background thread; server.url
    ...; server.stop()                                      # drains in-flight requests, flushes the ledger
    proc, url = start_gateway_process("gateway.toml")       # `autarky gateway` as a subprocess
    ...; proc.terminate(); proc.wait()                      # SIGTERM: same graceful shutdown

    from autarky.gateway.drill import run_burst
    report = run_burst(url, n=200, concurrency=8, model="task:spreadsheet", midway=stop_one_server)
    print(report.summary())
"""
