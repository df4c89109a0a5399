"""The paged KV cache: a memory budget fixed at start-up and kept under a burst, requests that cannot fit it are a
400, preempted sequences resume with the tokens they would have had, and chunked prefill equals one-shot prefill."""

from __future__ import annotations

import httpx
import pytest

from autarky.model.sampling import SamplingParams
from autarky.serve.cache import BLOCK_SIZE
from autarky.serve.registry import ModelRegistry, ServedModelSpec
from autarky.serve.server import Server
from fixtures.engine_runs import assert_same, blocks_for, engine_for, greedy, prompts, run

pytestmark = pytest.mark.timeout(300)


def test_preempted_sequences_resume_with_the_same_tokens(tiny_model):
    """Eight sequences that each grow to 3-4 blocks in a pool of 12: running rows run out of blocks, the newest
    are preempted (blocks freed, recomputed later) and still give their unpreempted tokens, greedy and seeded."""
    model, codec = tiny_model
    ids = [codec.encode(f"{i} {'ab' * (3 + i)}") for i in range(8)]
    jobs = [(p, greedy(40)) for p in ids[:5]]
    jobs += [(p, SamplingParams(max_tokens=40, temperature=1.0, seed=i, ignore_eos=True, logprobs=0))
             for i, p in enumerate(ids[5:])]
    roomy = engine_for(tiny_model)
    try:
        expected = [run(roomy, [job])[0] for job in jobs]
        together = run(roomy, jobs)
        assert roomy.metrics.num_preemptions._value.get() == 0
    finally:
        roomy.shutdown(timeout=30)
    assert_same(together, expected)
    tight = engine_for(tiny_model, kv_cache_gb=blocks_for(model, 12))
    try:
        got = run(tight, jobs)
        preempted = tight.metrics.num_preemptions._value.get()
    finally:
        tight.shutdown(timeout=30)
    assert preempted > 0
    assert_same(got, expected)


def test_chunked_prefill_equals_one_shot_prefill(tiny_model, monkeypatch):
    _, codec = tiny_model
    ids = prompts(codec)
    jobs = [(ids[0], greedy(8)), (ids[1], SamplingParams(max_tokens=8, temperature=0.8, seed=3, n=2,
                                                         ignore_eos=True, logprobs=0))]
    one_shot = engine_for(tiny_model, enable_prefix_caching=False)
    try:
        expected = [run(one_shot, [job])[0] for job in jobs]
    finally:
        one_shot.shutdown(timeout=30)
    chunked = engine_for(tiny_model, enable_prefix_caching=False, max_num_batched_tokens=24)
    widths = []
    real = chunked._prefill
    monkeypatch.setattr(chunked, "_prefill", lambda chunks, out: (widths.append(max(c.length for c in chunks)),
                                                                   real(chunks, out)))
    try:
        got = [run(chunked, [job])[0] for job in jobs]
        together = run(chunked, jobs, stagger_after=2)  # the second prompt's chunks between the first's decodes
    finally:
        chunked.shutdown(timeout=30)
    assert max(widths) <= 24 and len(widths) >= 2 * -(-len(ids[0]) // 24)
    assert_same(got, expected)
    assert_same(together, expected)


def test_memory_stays_within_the_budget_under_a_burst(tiny_model):
    """The pool is allocated once at start-up (its bytes are the budget, plus one scratch block) and a burst of
    requests bigger than it runs without any KV memory growing: same tensors, same bytes, blocks never over."""
    model, codec = tiny_model
    budget = blocks_for(model, 20)
    engine = engine_for(tiny_model, kv_cache_gb=budget)
    k, v, nbytes = engine.cache.k, engine.cache.v, engine.cache.nbytes
    peak = []
    real = engine.pool.allocate
    engine.pool.allocate = lambda: (real(), peak.append(engine.pool.stats().used))[0]
    try:
        assert nbytes <= budget * 1e9 * 21 / 20 + 1
        jobs = [(codec.encode(f"{i} burst " * (4 + i % 5)), greedy(30)) for i in range(24)]
        results = run(engine, jobs)
    finally:
        engine.shutdown(timeout=30)
    assert all(r[0]["finish"] == "length" and len(r[0]["ids"]) == 30 for r in results)
    assert engine.cache.k is k and engine.cache.v is v and engine.cache.nbytes == nbytes
    assert max(peak) == 20  # the burst filled the pool, and no more
    assert engine.pool.stats().used == 0  # every sequence gave its blocks back


def test_a_request_larger_than_the_whole_cache_is_a_400(tiny_hf_model_dir):
    spec = ServedModelSpec(str(tiny_hf_model_dir), name="tiny", kv_cache_gb=8 * 2 * 4 * BLOCK_SIZE * 2 * 32 * 4 / 1e9)
    server = Server(ModelRegistry([spec])).start()
    try:
        engine = server.registry.models["tiny"].engine
        capacity = engine.pool.n_blocks * BLOCK_SIZE
        assert capacity < engine.max_model_len  # fits the context, not the cache
        answer = httpx.post(f"{server.url}/v1/completions", timeout=60,
                            json={"model": "tiny", "prompt": "hello", "max_tokens": capacity})
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == "kv_cache_too_small" and "--kv-cache-gb" in error["message"]
        ok = httpx.post(f"{server.url}/v1/completions", timeout=60,
                        json={"model": "tiny", "prompt": "hello", "max_tokens": 4})
        assert ok.status_code == 200
        metrics = httpx.get(f"{server.url}/metrics", timeout=60).text
        for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
                     "vllm:kv_cache_usage_perc", "vllm:request_queue_time_seconds_count",
                     "autarky:kv_cache_blocks_used", "autarky:kv_cache_blocks_free"):
            assert f'{name}{{model_name="tiny"}}' in metrics
        assert f'autarky:kv_cache_blocks_free{{model_name="tiny"}} {engine.pool.n_blocks}.0' in metrics
    finally:
        server.stop()
