"""Gateway overhead: the same bounded load straight to a local upstream, through autarky's gateway and,
when given, through LiteLLM's proxy (installed in its own venv, never in the project's). Prints the added
latency (sequential p50/p99), max requests/s and p50/p99 under concurrency, CPU per request of each proxy
process, and the ratios.

  .venv/bin/python bench/gateway_overhead.py [--requests 2000] [--concurrency 32] [--sequential 300] [--stream]
      [--litellm-venv /tmp/litellm-venv | --litellm-url http://127.0.0.1:4001 --litellm-key KEY [--litellm-pid N]]

Everything runs on 127.0.0.1: the upstream is autarky's partner simulator (autarky.demo.partners) in its own process,
the gateway and LiteLLM each in their own process, the load generator (aiohttp) in this one. On a shared
2-vCPU box the absolute numbers are pessimistic; CPU per request and the ratios are the robust part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from autarky.gateway.server import free_port, wait_for_http


@dataclass
class Target:
    name: str
    url: str  # .../v1/chat/completions
    model: str
    pid: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    seq_p50: float = 0.0
    seq_p99: float = 0.0
    rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    cpu_ms: float | None = None
    errors: int = 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def load(target: Target, n: int, concurrency: int, stream: bool) -> tuple[list[float], float, int]:
    body = {"model": target.model, "messages": [{"role": "user", "content": "sum the column"}], "max_tokens": 8,
            "stream": stream}
    latencies: list[float] = []
    errors = 0
    jobs = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=target.headers,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker() -> None:
            nonlocal errors
            for _ in jobs:
                start = time.perf_counter()
                async with session.post(target.url, json=body) as r:
                    await r.read()
                    errors += r.status != 200
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start, errors


def measure(target: Target, args: argparse.Namespace) -> Result:
    asyncio.run(load(target, 50, 4, args.stream))  # warm up connections and caches
    seq, _, e1 = asyncio.run(load(target, args.sequential, 1, args.stream))
    cpu0 = cpu_seconds(target.pid) if target.pid else None
    lat, wall, e2 = asyncio.run(load(target, args.requests, args.concurrency, args.stream))
    cpu_ms = (cpu_seconds(target.pid) - cpu0) / args.requests * 1000 if target.pid else None
    return Result(pct(seq, 0.5), pct(seq, 0.99), args.requests / wall, pct(lat, 0.5), pct(lat, 0.99), cpu_ms,
                  e1 + e2)


def start(cmd: list[str], url: str, env: dict | None = None, timeout_s: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_http(url, timeout_s, proc)
    except BaseException:
        proc.kill()
        raise
    return proc


def gateway_config(upstream: str, workdir: Path) -> Path:
    path = workdir / "gateway.toml"
    flush = os.environ.get("BENCH_LEDGER_FLUSH", "0.2")
    path.write_text(f"""store = "sqlite:///{workdir}/bench.db"
require_keys = false
ledger_flush_s = {flush}
[providers.local]
kind = "openai"
base_url = "{upstream}/v1"
in_house = true
max_data_class = "restricted"
[models.bench]
provider = "local"
upstream_id = "bench-up"
""")
    return path


def litellm_config(upstream: str, workdir: Path) -> Path:
    path = workdir / "litellm.yaml"
    path.write_text(f"""model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench-up
      api_base: {upstream}/v1
      api_key: unused
""")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests in the concurrent run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sequential", type=int, default=300, help="requests in the one-at-a-time run")
    parser.add_argument("--stream", action="store_true", help="streamed chat completions instead")
    parser.add_argument("--litellm-venv", help="a venv with `litellm[proxy]` installed; the bench starts it")
    parser.add_argument("--litellm-url", help="an already running LiteLLM proxy serving model `bench`")
    parser.add_argument("--litellm-key", help="its master key (with --litellm-url)")
    parser.add_argument("--litellm-pid", type=int, help="its process id, for CPU per request")
    parser.add_argument("--litellm-requests", type=int, help="requests for LiteLLM's concurrent run "
                        "(default: --requests; it manages ~20-50 req/s here)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="autarky-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        procs.append(start([sys.executable, "-m", "autarky.demo.partners", "--port", str(up_port)],
                           upstream + "/v1/models"))
        gw_port = free_port()
        procs.append(start([sys.executable, "-m", "autarky.gateway", "gateway", "--config",
                            str(gateway_config(upstream, workdir)), "--port", str(gw_port)],
                           f"http://127.0.0.1:{gw_port}/health"))
        targets = [Target("direct", upstream + "/v1/chat/completions", "bench-up", procs[0].pid),
                   Target("autarky", f"http://127.0.0.1:{gw_port}/v1/chat/completions", "bench", procs[1].pid)]
        if args.litellm_venv:
            key = "sk-" + secrets.token_hex(24)
            port = free_port()
            env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": key, "LITELLM_LOG": "ERROR"}
            procs.append(start([str(Path(args.litellm_venv) / "bin" / "litellm"), "--config",
                                str(litellm_config(upstream, workdir)), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"], f"http://127.0.0.1:{port}/health/liveliness", env, 180))
            targets.append(Target("litellm", f"http://127.0.0.1:{port}/v1/chat/completions", "bench",
                                  procs[-1].pid, {"authorization": f"Bearer {key}"}))
        elif args.litellm_url:
            headers = {"authorization": f"Bearer {args.litellm_key}"} if args.litellm_key else {}
            targets.append(Target("litellm", args.litellm_url.rstrip("/") + "/v1/chat/completions", "bench",
                                  args.litellm_pid, headers))

        results: dict[str, Result] = {}
        for t in targets:
            run_args = args
            if t.name == "litellm" and args.litellm_requests:
                run_args = argparse.Namespace(**{**vars(args), "requests": args.litellm_requests,
                                                 "sequential": min(args.sequential, args.litellm_requests)})
            results[t.name] = measure(t, run_args)
            print(f"  measured {t.name}", file=sys.stderr)
        report(results, args)
        if args.json:
            Path(args.json).write_text(json.dumps({k: vars(v) for k, v in results.items()}, indent=2))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    kind = "streamed" if args.stream else "non-streamed"
    print(f"\n{kind} chat completions; sequential run: {args.sequential} requests; concurrent run: "
          f"{args.requests} requests at concurrency {args.concurrency}; load avg {os.getloadavg()[0]:.1f}")
    print(f"{'target':<9} {'seq p50':>9} {'seq p99':>9} {'req/s':>8} {'p50':>9} {'p99':>9} {'CPU/req':>9} {'errors':>6}")
    for name, r in results.items():
        cpu = f"{r.cpu_ms:.2f}ms" if r.cpu_ms is not None else "-"
        print(f"{name:<9} {r.seq_p50:>7.2f}ms {r.seq_p99:>7.2f}ms {r.rps:>8.0f} {r.p50:>7.1f}ms {r.p99:>7.1f}ms "
              f"{cpu:>9} {r.errors:>6}")
    direct = results["direct"]
    for name in ("autarky", "litellm"):
        if name in results:
            r = results[name]
            print(f"{name}: added latency p50 {r.seq_p50 - direct.seq_p50:+.2f} ms, p99 {r.seq_p99 - direct.seq_p99:+.2f} ms "
                  f"(sequential); {r.rps / direct.rps:.2f}x the direct req/s")
    if "litellm" in results:
        ours, theirs = results["autarky"], results["litellm"]
        print(f"autarky vs LiteLLM: {ours.rps / theirs.rps:.1f}x the requests/s; added p50 "
              f"{(theirs.seq_p50 - direct.seq_p50) / max(ours.seq_p50 - direct.seq_p50, 1e-3):.1f}x lower", end="")
        if ours.cpu_ms and theirs.cpu_ms:
            print(f"; {theirs.cpu_ms / ours.cpu_ms:.1f}x less CPU per request")
        else:
            print()


if __name__ == "__main__":
    main()
