"""The shared-prefix workload: what products send. A long system prompt (the product's instructions and a data
sheet of about 1,500 tokens) shared by every request, a short question each; 16 requests, 4 at a time, 16 tokens
out, streamed through the OpenAI chat API. Prints the wall time and the mean time to first token.

`shared_prefix_workload` drives any OpenAI-compatible server (bench/serve_vs_vllm.py runs it against vLLM too);
`main` serves SmolLM2-135M with autarky in this process and runs it:

    .venv/bin/python bench/shared_prefix.py                        # prefix caching on (the default)
    .venv/bin/python bench/shared_prefix.py --no-prefix-caching    # every prompt prefilled in full
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass

INSTRUCTIONS = ("You are the support assistant of Northwind Outdoor Supply. Answer in one short sentence, using only "
                "the data sheet below. If the data sheet does not say, answer that you do not know.\n\nDATA SHEET\n")
QUESTIONS = ["Which items weigh less than 2 kg?", "What is the cheapest tent?", "Which stove burns alcohol?",
             "How many colours does the rain jacket come in?", "Which items are waterproof?",
             "What is the warranty on backpacks?", "Which sleeping bag is rated below zero?",
             "What does item 17 cost?"]


def system_prompt(rows: int = 33, salt: str = "") -> str:
    """The shared instructions and data sheet (rows=33: about 1,500 SmolLM2 tokens; 60 rows are 2,700, past a 2,048
    context); a salt makes the prompt new to every prefix cache (a repeat that must miss)."""
    kinds = ["tent", "backpack", "stove", "sleeping bag", "rain jacket", "headlamp", "water filter", "trekking pole"]
    lines = [f"Item {i:03d}: {kinds[i % len(kinds)]}, model NW-{1000 + 37 * i}, weight {0.4 + (i * 7 % 31) / 10:.1f} "
             f"kg, price {19 + (i * 13 % 280)} EUR, colours {1 + i % 5}, waterproof {'yes' if i % 3 else 'no'}, "
             f"warranty {1 + i % 4} years." for i in range(rows)]
    return (f"Session {salt}. " if salt else "") + INSTRUCTIONS + "\n".join(lines)


@dataclass(frozen=True)
class SharedPrefixResult:
    wall_s: float
    mean_ttft_s: float
    requests: int


async def _workload(base_url: str, model: str, requests: int, concurrency: int, max_tokens: int,
                    rows: int, salt: str) -> SharedPrefixResult:  # fmt: skip
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=900)
    system, gate, ttfts = system_prompt(rows, salt), asyncio.Semaphore(concurrency), []

    async def one(i: int) -> None:
        async with gate:
            start = time.perf_counter()
            stream = await client.chat.completions.create(
                model=model, max_tokens=max_tokens, temperature=0.0, stream=True,
                messages=[{"role": "system", "content": system},
                          {"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (ticket {i})"}])
            first = None
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
            ttfts.append(first if first is not None else time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(requests)])
    wall = time.perf_counter() - start
    await client.close()
    return SharedPrefixResult(wall, sum(ttfts) / len(ttfts), requests)


def shared_prefix_workload(base_url: str, model: str, *, requests: int = 16, concurrency: int = 4,
                           max_tokens: int = 16, rows: int = 33, salt: str = "") -> SharedPrefixResult:  # fmt: skip
    """Run the workload against an OpenAI-compatible server at base_url (ending in /v1) serving `model`."""
    return asyncio.run(_workload(base_url, model, requests, concurrency, max_tokens, rows, salt))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--no-prefix-caching", action="store_true", help="serve with prefix caching off")
    args = ap.parse_args()
    from autarky.serve.registry import ModelRegistry, ServedModelSpec
    from autarky.serve.server import Server
    from serve_decode import in_own_thread, smollm2_folder

    extra = {"enable_prefix_caching": False} if args.no_prefix_caching else {}
    spec = ServedModelSpec(str(smollm2_folder()), name="bench", max_batch=args.concurrency, **extra)
    server = in_own_thread(lambda: Server(ModelRegistry([spec])).start())
    try:
        result = shared_prefix_workload(f"{server.url}/v1", "bench", requests=args.requests,
                                        concurrency=args.concurrency, max_tokens=args.max_tokens)
    finally:
        server.stop()
    print(f"shared prefix ({args.requests} requests, {args.concurrency} at a time, {args.max_tokens} tokens out, "
          f"prefix caching {'off' if args.no_prefix_caching else 'on'}): wall {result.wall_s:.1f} s, "
          f"mean TTFT {result.mean_ttft_s:.2f} s | load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
