"""Chunked prefill: what a long prompt arriving does to the streams already running.

Four streams decode (64 tokens each, `ignore_eos`, greedy); once they are under way, a ~1,500-token prompt arrives
(prefix caching off, so it is computed in full). Prints the inter-token latency of the running streams while that
prompt is prefilled — p50, p99 and the longest gap — with chunked prefill (the default, 512 tokens per engine step)
and without (the whole prompt in one step), and the ratio. Serves SmolLM2-135M in this process, one server at a
time, alternating:

    .venv/bin/python bench/serve_chunked_prefill.py --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

STREAMS, TOKENS, LONG_AFTER_S = 4, 64, 1.0


async def _measure(base_url: str) -> list[float]:
    """Gaps (s) between consecutive tokens of the running streams, from the long prompt's arrival to its first
    token (the window in which its prefill competes with their decode steps)."""
    from openai import AsyncOpenAI

    from shared_prefix import system_prompt

    client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=900)
    stamps: list[list[float]] = [[] for _ in range(STREAMS)]
    window: list[float] = []

    async def stream(i: int) -> None:
        response = await client.completions.create(model="bench", prompt=f"def function_{i}(x):", max_tokens=TOKENS,
                                                   temperature=0.0, stream=True, extra_body={"ignore_eos": True})
        async for _ in response:
            stamps[i].append(time.perf_counter())

    async def long_prompt() -> None:
        await asyncio.sleep(LONG_AFTER_S)
        window.append(time.perf_counter())
        response = await client.completions.create(model="bench", prompt=system_prompt(), max_tokens=1,
                                                   temperature=0.0, stream=True)
        async for _ in response:
            window.append(time.perf_counter())
            break

    await asyncio.gather(*[stream(i) for i in range(STREAMS)], long_prompt())
    await client.close()
    start, end = window[0], window[-1]
    return [b - a for ts in stamps for a, b in zip(ts, ts[1:], strict=False) if b >= start and a <= end]


def run(chunk_tokens: int) -> list[float]:
    from autarky.serve.registry import ModelRegistry, ServedModelSpec
    from autarky.serve.server import Server
    from serve_decode import in_own_thread, smollm2_folder

    spec = ServedModelSpec(str(smollm2_folder()), name="bench", max_batch=STREAMS + 1, enable_prefix_caching=False,
                           max_num_batched_tokens=chunk_tokens)
    server = in_own_thread(lambda: Server(ModelRegistry([spec])).start())
    try:
        return asyncio.run(_measure(f"{server.url}/v1"))
    finally:
        server.stop()


def _summary(gaps: list[float]) -> tuple[float, float, float]:
    ordered = sorted(gaps)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return statistics.median(ordered), p99, ordered[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of (chunked, one-shot)")
    ap.add_argument("--chunk", type=int, default=512, help="tokens per engine step when chunked")
    args = ap.parse_args()
    gaps: dict[str, list[float]] = {"chunked": [], "one-shot": []}
    for _ in range(args.rounds):
        gaps["chunked"] += run(args.chunk)
        gaps["one-shot"] += run(1 << 20)
    stats = {name: _summary(g) for name, g in gaps.items() if g}
    for name, (p50, p99, worst) in stats.items():
        print(f"{name:9s} inter-token latency while a 1,500-token prompt is prefilled: p50 {p50 * 1e3:7.0f} ms  "
              f"p99 {p99 * 1e3:7.0f} ms  max {worst * 1e3:7.0f} ms  ({len(gaps[name])} gaps)")
    if len(stats) == 2:
        print(f"p99 one-shot / chunked: {stats['one-shot'][1] / stats['chunked'][1]:.2f}x | load average "
              f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
