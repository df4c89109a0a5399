"""Prefix caching: a request that starts like an earlier one reuses the earlier one's KV blocks and computes only
the rest, with the outputs it would have had without the cache (greedy and seeded), also for n > 1, prompt
logprobs, constrained output and under eviction."""

from __future__ import annotations

import pytest

from autarky.model.sampling import SamplingParams
from autarky.serve.blocks import BlockPool, block_hashes
from autarky.serve.cache import BLOCK_SIZE
from fixtures.engine_runs import assert_same, blocks_for, engine_for, greedy, prompts, run

pytestmark = pytest.mark.timeout(300)

def test_hits_give_the_outputs_of_misses(tiny_model):
    _, codec = tiny_model
    ids = prompts(codec)
    assert len(ids[0]) > 4 * BLOCK_SIZE  # the shared part spans several blocks
    seeded = SamplingParams(max_tokens=10, temperature=0.9, seed=5, n=2, ignore_eos=True)
    jobs = [(p, greedy(10)) for p in ids] + [(ids[1], seeded)]
    cold = engine_for(tiny_model, enable_prefix_caching=False)
    try:
        expected = [run(cold, [job])[0] for job in jobs]
        assert cold.metrics.prefix_cache_hits._value.get() == 0
    finally:
        cold.shutdown(timeout=30)
    warm = engine_for(tiny_model)
    try:
        one_by_one = [run(warm, [job])[0] for job in jobs]  # each after the others: hits from the second on
        hits = warm.metrics.prefix_cache_hits._value.get()
        assert hits >= (len(jobs) - 1) * 4 * BLOCK_SIZE
        assert warm.metrics.prefix_cache_queries._value.get() == sum(len(p) for p, _ in jobs)
        together = run(warm, jobs)  # continuous batching over shared blocks
        staggered = run(warm, jobs, stagger_after=3)
    finally:
        warm.shutdown(timeout=30)
    for got in (one_by_one, together, staggered):
        assert_same(got, expected)


def test_requests_arriving_together_compute_a_new_shared_prefix_once(tiny_model):
    """The first request computes the shared prefix; the others wait for its blocks and reuse them (as vLLM
    does), rather than each computing the same blocks in the same step, with the outputs they would have had."""
    _, codec = tiny_model
    jobs = [(p, greedy(6)) for p in prompts(codec)]
    common = next(i for i, column in enumerate(zip(*(p for p, _ in jobs), strict=False)) if len(set(column)) > 1)
    shared = common // BLOCK_SIZE  # full blocks every prompt starts with
    cold = engine_for(tiny_model, enable_prefix_caching=False)
    try:
        expected = [run(cold, [job])[0] for job in jobs]
    finally:
        cold.shutdown(timeout=30)
    warm = engine_for(tiny_model)
    try:
        together = run(warm, jobs)  # nothing cached beforehand
        hits = warm.metrics.prefix_cache_hits._value.get()
    finally:
        warm.shutdown(timeout=30)
    assert hits >= (len(jobs) - 1) * shared * BLOCK_SIZE
    assert_same(together, expected)


def test_prompt_logprobs_and_echo_see_every_position_even_when_cached(tiny_model):
    _, codec = tiny_model
    ids = prompts(codec)[0]
    params = SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=1, logprobs=0)
    cold = engine_for(tiny_model, enable_prefix_caching=False)
    try:
        expected = run(cold, [(ids, params)])[0]
    finally:
        cold.shutdown(timeout=30)
    warm = engine_for(tiny_model)
    try:
        run(warm, [(ids, greedy(2))])  # caches the prompt's blocks
        got = run(warm, [(ids, params)])[0]
    finally:
        warm.shutdown(timeout=30)
    assert len(got["prompt"].logprobs) == len(ids)
    assert got["prompt"].logprobs == pytest.approx(expected["prompt"].logprobs, abs=1e-4)
    assert got[0]["ids"] == expected[0]["ids"]


def test_eviction_under_a_tiny_budget_keeps_outputs(tiny_model):
    """A pool of 16 blocks holds one of these prompts at a time (and little of the next): every request evicts
    cached blocks of earlier ones, and some are preempted, yet each gets its uncached output."""
    model, codec = tiny_model
    ids = [codec.encode(f"{i} " * (30 + 7 * i)) for i in range(6)] + prompts(codec)[:2]
    jobs = [(p, greedy(8)) for p in ids]
    cold = engine_for(tiny_model, enable_prefix_caching=False)
    try:
        expected = [run(cold, [job])[0] for job in jobs]
    finally:
        cold.shutdown(timeout=30)
    small = engine_for(tiny_model, kv_cache_gb=blocks_for(model, 16))
    try:
        assert small.pool.n_blocks == 16
        got = [run(small, [job])[0] for job in jobs + jobs[::-1]]
        together = run(small, jobs)
    finally:
        small.shutdown(timeout=30)
    assert_same(got, expected + expected[::-1])
    assert_same(together, expected)


def test_the_pool_shares_refcounts_and_evicts_least_recently_freed():
    pool = BlockPool(4, 2)
    tokens = [1, 2, 3, 4, 5]
    hashes = block_hashes(tokens, 2)
    assert len(hashes) == 2 and hashes != block_hashes([9, 2, 3, 4], 2)  # a chain: the head changes every hash
    assert block_hashes(tokens, 2, adapter=("alpha", "/a")) != hashes  # per adapter
    first = [pool.allocate(), pool.allocate()]
    for block, digest in zip(first, hashes, strict=True):
        pool.register(block, digest)
    assert pool.cached_prefix(hashes) == first
    for block in first:
        pool.acquire(block)  # a second holder (another choice, or a cache hit)
    pool.release(first)
    assert pool.stats().used == 2  # still held once
    pool.release(first)
    assert pool.stats().used == 0 and pool.stats().cached == 2
    assert pool.cached_prefix(hashes) == first  # free, but findable until evicted
    others = [pool.allocate(), pool.allocate()]  # the never-used blocks go first
    assert set(others).isdisjoint(first) and pool.cached_prefix(hashes) == first
    pool.allocate()  # now the tail block of the released sequence is evicted (freed first: tail first)
    assert pool.cached_prefix(hashes) == first[:1]
    assert not BlockPool(4, 2, caching=False).cached_prefix(hashes)
