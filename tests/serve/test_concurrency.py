"""Many clients at once: continuous batching keeps every stream correct; disconnects free slots; metrics add up."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(180)


def metric(text: str, name: str, model: str = "tiny") -> float:
    match = re.search(rf'^{re.escape(name)}\{{[^}}]*model_name="{model}"[^}}]*\}} (\S+)$', text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_sixteen_simultaneous_streams_match_their_solo_runs(served_tiny_model):
    prompts = [f"def function_{i}(x):" for i in range(16)]
    kw = dict(model=served_tiny_model.model, max_tokens=24, temperature=0.8, extra_body={"ignore_eos": True})

    async def main() -> tuple[list[str], list[str]]:
        client = openai.AsyncOpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)

        async def streamed(i: int) -> str:
            stream = await client.completions.create(prompt=prompts[i], seed=i, stream=True, **kw)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        together = await asyncio.gather(*[streamed(i) for i in range(16)])
        solo = []
        for i in range(16):
            r = await client.completions.create(prompt=prompts[i], seed=i, **kw)
            assert r.usage.completion_tokens == 24
            solo.append(r.choices[0].text)
        await client.close()
        return list(together), solo

    together, solo = asyncio.run(main())
    assert together == solo
    assert len(set(solo)) > 8  # different seeds and prompts really produced different streams


def test_batched_equals_unbatched_greedy_over_http(served_tiny_model):
    prompts = ["import json\n", "for i in range(10):", "class Node:", "return None", "x = {'a': 1,"]
    kw = dict(model=served_tiny_model.model, temperature=0.0, logprobs=1, extra_body={"ignore_eos": True})

    async def main() -> tuple[list, list]:
        client = openai.AsyncOpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)
        budgets = [20, 5, 13, 9, 17]
        together = await asyncio.gather(*[
            client.completions.create(prompt=p, max_tokens=m, **kw) for p, m in zip(prompts, budgets, strict=True)
        ])
        alone = [await client.completions.create(prompt=p, max_tokens=m, **kw)
                 for p, m in zip(prompts, budgets, strict=True)]
        await client.close()
        return together, alone

    together, alone = asyncio.run(main())
    for t, a in zip(together, alone, strict=True):
        assert t.choices[0].text == a.choices[0].text
        assert t.choices[0].logprobs.tokens == a.choices[0].logprobs.tokens
        assert t.choices[0].logprobs.token_logprobs == pytest.approx(a.choices[0].logprobs.token_logprobs, abs=1e-4)


def test_client_disconnect_cancels_generation(served_tiny_model):
    root = served_tiny_model.root_url
    payload = {"model": served_tiny_model.model, "prompt": "x", "max_tokens": 240, "stream": True,
               "ignore_eos": True}
    with httpx.stream("POST", f"{served_tiny_model.base_url}/completions", json=payload, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # The connection is closed after one chunk; the engine must drop the request instead of finishing 240 tokens.
    deadline = time.monotonic() + 20
    while metric(httpx.get(f"{root}/metrics").text, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the abandoned request is still running"
        time.sleep(0.05)
    generated = metric(httpx.get(f"{root}/metrics").text, "vllm:generation_tokens_total")
    time.sleep(0.3)
    assert metric(httpx.get(f"{root}/metrics").text, "vllm:generation_tokens_total") == generated


def test_metrics_use_vllm_names_and_count(served_tiny_model):
    client = openai.OpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)
    before = httpx.get(f"{served_tiny_model.root_url}/metrics").text
    r = client.completions.create(model=served_tiny_model.model, prompt="abc", max_tokens=5,
                                  extra_body={"ignore_eos": True})
    after = httpx.get(f"{served_tiny_model.root_url}/metrics").text
    gained = metric(after, "vllm:generation_tokens_total") - metric(before, "vllm:generation_tokens_total")
    assert gained == r.usage.completion_tokens == 5
    prompt_gained = metric(after, "vllm:prompt_tokens_total") - metric(before, "vllm:prompt_tokens_total")
    assert prompt_gained == r.usage.prompt_tokens
    expected_counts = {"vllm:time_to_first_token_seconds_count": 1, "vllm:e2e_request_latency_seconds_count": 1,
                       "vllm:inter_token_latency_seconds_count": 4}  # 5 tokens: 1 first + 4 gaps
    for name, count in expected_counts.items():
        assert metric(after, name) - metric(before, name) == count
    assert metric(after, "vllm:num_requests_running") == 0
    assert metric(after, "vllm:num_requests_waiting") == 0
