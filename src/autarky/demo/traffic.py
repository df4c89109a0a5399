"""Client-side traffic for the demo: timed requests through the official `openai` SDK, and product bursts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import openai


@dataclass
class StreamTiming:
    text: str
    ttft_s: float
    tokens: int
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - self.ttft_s
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else float("nan")


def timed_chat(client: openai.OpenAI, model: str, prompt: str, max_tokens: int, chat: bool = True,
               temperature: float = 0.0) -> StreamTiming:
    """One streamed request; time to first token and decode tokens/s as the client sees them."""
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    tokens = 0
    if chat:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=temperature, seed=0, stream=True, stream_options={"include_usage": True})
    else:
        stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                           temperature=temperature, seed=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            piece = choice.delta.content if chat else choice.text
            if piece:
                first = first or time.perf_counter()
                pieces.append(piece)
    end = time.perf_counter()
    return StreamTiming("".join(pieces), (first or end) - start, tokens, end - start)


@dataclass
class BurstResult:
    sent: int = 0
    served: int = 0
    failed: int = 0
    failovers: int = 0  # attempts the gateway moved to another candidate (x-autarky-failovers)
    served_by: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    def p50_ms(self) -> float:
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[len(ordered) // 2] if ordered else float("nan")


PRODUCT_PROMPTS = {
    "chat": "What is 12 plus 30? Answer with the number only.",
    "spreadsheet": "Write a spreadsheet formula that sums the cells A1 to A10.",
    "slides": "Outline a 3-slide deck about quarterly sales as JSON.",
    "code": "Write a Python function add(a, b) that returns a + b.",
    "code-completion": "def read_lines(path):\n",
}


async def product_burst(base_url: str, api_key: str, tasks: list[str], requests: int, concurrency: int,
                        max_tokens: int = 16, on_progress: Callable[[int, BurstResult], None] | None = None,
                        ) -> BurstResult:
    """`requests` chat requests spread over product tasks ("model": "task:NAME"), `concurrency` at a time.

    The gateway names the model and provider that served each one in response headers; those are counted.
    on_progress(done, result) runs after each completed request (the outage drill uses it to pull a plug)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    result = BurstResult()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            task = tasks[i % len(tasks)]
            result.sent += 1
            start = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=f"task:{task}", max_tokens=max_tokens, temperature=0,
                    messages=[{"role": "user", "content": PRODUCT_PROMPTS.get(task, "Hello")}])
                raw.parse()
                result.served += 1
                result.failovers += int(raw.headers.get("x-autarky-failovers") or 0)
                result.served_by[f"{raw.headers.get('x-autarky-model')}@{raw.headers.get('x-autarky-provider')}"] += 1
                result.latencies_s.append(time.perf_counter() - start)
            except openai.APIError as exc:
                result.failed += 1
                result.errors[type(exc).__name__] += 1
            if on_progress is not None:
                on_progress(result.served + result.failed, result)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return result
