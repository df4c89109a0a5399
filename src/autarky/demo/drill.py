"""The traffic driver: bursts of requests against a running gateway, for the demo's product traffic and outage
drill, the gateway's tests and its load test. One driver: a burst reports what served each request, how often
the gateway failed over, and each request's id and status as the client saw them.

    report = run_burst(url, n=200, concurrency=8, model="task:spreadsheet", midway=stop_one_server)
    print(report.summary())
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

# One prompt per product task, so that a product burst looks like the product's traffic.
PRODUCT_PROMPTS = {
    "chat": "What is 12 plus 30? Answer with the number only.",
    "spreadsheet": "Write a spreadsheet formula that sums the cells A1 to A10.",
    "slides": "Outline a 3-slide deck about quarterly sales as JSON.",
    "code": "Write a Python function add(a, b) that returns a + b.",
    "code-completion": "def read_lines(path):\n",
}


@dataclass
class BurstReport:
    requests: int  # how many the burst was asked to send
    statuses: Counter = field(default_factory=Counter)  # status as the client saw it; 0: no answer at all
    served_by: Counter = field(default_factory=Counter)  # "model@provider" of each served request
    errors: Counter = field(default_factory=Counter)  # failed requests by error code (or exception name)
    failovers: int = 0  # attempts the gateway moved to another candidate (x-autarky-failovers)
    latencies_ms: list[float] = field(default_factory=list)
    results: list[tuple[str, int]] = field(default_factory=list)  # (x-autarky-request-id, status), as finished
    elapsed_s: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.results)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    @property
    def by_model(self) -> Counter:
        out: Counter = Counter()
        for who, count in self.served_by.items():
            out[who.split("@")[0]] += count
        return out

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def p50_ms(self) -> float:
        return self.percentile_ms(0.5)

    def summary(self) -> str:
        models = ", ".join(f"{m}: {n}" for m, n in self.by_model.most_common())
        return (f"{self.ok}/{self.requests} served (statuses {dict(self.statuses)}) in {self.elapsed_s:.1f}s; "
                f"by model: {models}; failovers: {self.failovers}; p50 {self.percentile_ms(0.5):.0f} ms, "
                f"p99 {self.percentile_ms(0.99):.0f} ms")


Request = Callable[[int], tuple[str, dict]]  # request number -> (path, JSON body)


def chat_request(model: str, prompt: str, max_tokens: int) -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}
    return lambda _i: ("/v1/chat/completions", body)


def product_requests(tasks: Sequence[str], max_tokens: int) -> Request:
    """Chat requests spread round-robin over product tasks (`"model": "task:NAME"`)."""
    bodies = [{"model": f"task:{t}", "messages": [{"role": "user", "content": PRODUCT_PROMPTS.get(t, "Hello")}],
               "max_tokens": max_tokens, "temperature": 0} for t in tasks]
    return lambda i: ("/v1/chat/completions", bodies[i % len(bodies)])


async def burst(
    url: str, n: int = 200, concurrency: int = 8, model: str = "task:spreadsheet", key: str | None = None,
    midway: Callable[[], None] | None = None, midway_after: float = 0.5, max_tokens: int = 8,
    prompt: str = "Sum the column B2:B9.", *, tasks: Sequence[str] | None = None, request: Request | None = None,
    on_progress: Callable[[int, BurstReport], None] | None = None,
) -> BurstReport:
    """Send `n` requests to the gateway at `url` (no /v1), `concurrency` at a time: chat requests for `model`,
    or spread over product `tasks`, or whatever `request(i)` returns. `midway()` runs once, in a thread, after
    that share is done; `on_progress(done, report)` after every request."""
    if request is None:
        request = product_requests(tasks, max_tokens) if tasks else chat_request(model, prompt, max_tokens)
    report = BurstReport(n)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    jobs = iter(range(n))
    fired = False
    base = url.rstrip("/")
    start = time.perf_counter()
    # aiohttp rather than httpx or an SDK: the load generator needs a tenth of the CPU, which matters on a
    # box whose few cores also run the gateway and its upstreams.
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one(i: int) -> None:
            path, body = request(i)
            t0 = time.perf_counter()
            try:
                async with session.post(base + path, json=body) as r:
                    data = await r.read()
                    status = r.status
                    if status == 200 and body.get("stream") and b'"error"' in data:
                        status = 502  # an in-band error after the first byte: the request failed
                    report.results.append((r.headers.get("x-autarky-request-id", ""), status))
                    report.failovers += int(r.headers.get("x-autarky-failovers", "0"))
                    if status == 200:
                        model_ = r.headers.get("x-autarky-model", "-")
                        report.served_by[f"{model_}@{r.headers.get('x-autarky-provider', '-')}"] += 1
                    else:
                        report.errors[_error_code(data, status)] += 1
            except aiohttp.ClientError as exc:
                status = 0
                report.results.append(("", status))
                report.errors[type(exc).__name__] += 1
            report.statuses[status] += 1
            report.latencies_ms.append((time.perf_counter() - t0) * 1000)

        async def worker() -> None:
            nonlocal fired
            for i in jobs:
                await one(i)
                if on_progress is not None:
                    on_progress(report.sent, report)
                if midway is not None and not fired and report.sent >= n * midway_after:
                    fired = True
                    await asyncio.to_thread(midway)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    report.elapsed_s = time.perf_counter() - start
    return report


def _error_code(data: bytes, status: int) -> str:
    try:
        error = orjson.loads(data).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return str(status)
    return str(error.get("code") or error.get("type") or status) if isinstance(error, dict) else str(status)


def run_burst(url: str, n: int = 200, concurrency: int = 8, **kwargs) -> BurstReport:
    """Blocking wrapper around `burst` (same arguments) for scripts and the demo."""
    return asyncio.run(burst(url, n, concurrency, **kwargs))
