"""Traffic drills against a running gateway: a burst of product requests, with an action (stop a model's
server, flip a policy) fired mid-burst, reporting what served them and whether every request succeeded.
Used by `autarky demo` for the outage drill and by the tests."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp


@dataclass
class DrillReport:
    requests: int
    statuses: Counter = field(default_factory=Counter)
    by_model: Counter = field(default_factory=Counter)
    failovers: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses[200]

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        models = ", ".join(f"{m}: {n}" for m, n in self.by_model.most_common())
        return (f"{self.ok}/{self.requests} served (statuses {dict(self.statuses)}) in {self.elapsed_s:.1f}s; "
                f"by model: {models}; failovers: {self.failovers}; p50 {self.percentile_ms(0.5):.0f} ms, "
                f"p99 {self.percentile_ms(0.99):.0f} ms")


async def burst(
    url: str, n: int = 200, concurrency: int = 8, model: str = "task:spreadsheet", key: str | None = None,
    midway: Callable[[], None] | None = None, midway_after: float = 0.5, max_tokens: int = 8,
    prompt: str = "Sum the column B2:B9.",
) -> DrillReport:
    """Send `n` chat requests to the gateway at `url`; call `midway()` (in a thread) after that share is done."""
    report = DrillReport(n)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    jobs = iter(range(n))
    fired = False
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    start = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def worker() -> None:
            nonlocal fired
            for _ in jobs:
                t0 = time.perf_counter()
                async with session.post(url.rstrip("/") + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    report.statuses[r.status] += 1
                    report.by_model[r.headers.get("x-autarky-model", "-")] += r.status == 200
                    report.failovers += int(r.headers.get("x-autarky-failovers", "0"))
                report.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if midway is not None and not fired and sum(report.statuses.values()) >= n * midway_after:
                    fired = True
                    await asyncio.to_thread(midway)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    report.elapsed_s = time.perf_counter() - start
    return report


def run_burst(url: str, n: int = 200, concurrency: int = 8, **kwargs) -> DrillReport:
    """Blocking wrapper around `burst` (same arguments) for scripts and the demo."""
    return asyncio.run(burst(url, n, concurrency, **kwargs))
