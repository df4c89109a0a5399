"""Constrained (json_schema) against unconstrained decoding through `autarky serve`, and the grammar cache.

Aggregate generated tokens/s through the OpenAI chat API (official SDK, real uvicorn server) at 1 and 8 concurrent
requests, the same model (SmolLM2-135M-Instruct) and the same number of tokens for both: the schema (an array of
at least 50 records) outlasts max_tokens, and the unconstrained requests run with ignore_eos, so every request
generates exactly --tokens tokens. Then the cache: two requests with a schema the server has not seen, one token
each, timed; the second pays no compilation.

    .venv/bin/python bench/serve_structured.py
    .venv/bin/python bench/serve_structured.py --tokens 128 --concurrency 1 8 --repeats 3

Goal: constrained at most 10% slower. Numbers depend on the load of the machine: both run in one process run,
alternating, best of --repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from openai import AsyncOpenAI

PROMPT = [{"role": "user", "content": "List some people with their age, city and hobbies as JSON."}]
RECORD = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "maxLength": 30}, "hobbies": {"type": "array", "items": {"enum": [
        "chess", "hiking", "painting", "cooking", "reading"]}, "maxItems": 3},
    "verified": {"type": "boolean"}}, "required": ["name", "age", "city", "hobbies", "verified"],
    "additionalProperties": False}
SCHEMA = {"type": "array", "items": RECORD, "minItems": 50}


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "people", "schema": schema, "strict": True}}


async def wave(client: AsyncOpenAI, concurrency: int, tokens: int, constrained: bool) -> float:
    extra = {"response_format": schema_format(SCHEMA)} if constrained else {"extra_body": {"ignore_eos": True}}

    async def one(i: int) -> int:
        r = await client.chat.completions.create(model="bench", messages=PROMPT, max_tokens=tokens, seed=i,
                                                 temperature=0.7, **extra)
        assert r.choices[0].finish_reason == "length", r.choices[0]
        return r.usage.completion_tokens

    start = time.perf_counter()
    counts = await asyncio.gather(*[one(i) for i in range(concurrency)])
    return sum(counts) / (time.perf_counter() - start)


async def timed(client: AsyncOpenAI, schema: dict) -> float:
    start = time.perf_counter()
    await client.chat.completions.create(model="bench", messages=PROMPT, max_tokens=1,
                                         response_format=schema_format(schema))
    return time.perf_counter() - start


async def run(url: str, args: argparse.Namespace) -> None:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    first_ever = await timed(client, {"type": "object"})  # includes building the grammar engine's tokenizer
    await wave(client, 1, 8, True)
    await wave(client, 1, 8, False)
    print(f"first constrained request ever (tokenizer for the grammar engine + compile): {first_ever:.3f} s")
    for c in args.concurrency:
        best = {True: 0.0, False: 0.0}
        for _ in range(args.repeats):
            for constrained in (False, True):
                best[constrained] = max(best[constrained], await wave(client, c, args.tokens, constrained))
        print(f"{c:2d} concurrent: unconstrained {best[False]:7.1f} tok/s | json_schema {best[True]:7.1f} tok/s | "
              f"constrained/unconstrained {best[True] / best[False]:.3f} "
              f"({(1 - best[True] / best[False]) * 100:+.1f}% slower)", flush=True)
    fresh = {**SCHEMA, "items": {**RECORD, "properties": {**RECORD["properties"],
                                                          f"id_{uuid.uuid4().hex[:8]}": {"type": "integer"}}}}
    first, second = await timed(client, fresh), await timed(client, fresh)
    print(f"new schema, 1-token request: first {first * 1000:.1f} ms (compiles), second {second * 1000:.1f} ms "
          f"(cached): compilation cost {max(first - second, 0) * 1000:.1f} ms")
    await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=96, help="tokens generated per request")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=2, help="best of this many waves per configuration")
    args = ap.parse_args()

    from autarky.export.source import resolve_model_source
    from autarky.serve.registry import ModelRegistry, ServedModelSpec
    from autarky.serve.server import Server

    spec = ServedModelSpec(str(resolve_model_source("smollm2")), name="bench", max_batch=max(args.concurrency),
                           max_model_len=1024)
    server = Server(ModelRegistry([spec])).start()
    try:
        asyncio.run(run(server.url, args))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
