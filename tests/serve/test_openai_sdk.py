"""The OpenAI wire contract through the official `openai` SDK, sync and async, streaming and not."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "user", "content": "Write a function that adds two numbers."}]


@pytest.fixture(scope="module")
def client(served_tiny_model) -> openai.OpenAI:
    return openai.OpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)


def test_models_list(client, served_tiny_model):
    models = client.models.list()
    assert [m.id for m in models.data] == [served_tiny_model.model]
    raw = httpx.get(f"{served_tiny_model.base_url}/models").json()
    assert raw["object"] == "list"
    entry = raw["data"][0]
    assert entry["object"] == "model" and isinstance(entry["created"], int) and entry["owned_by"]


def test_completion_non_streaming_shape(client, served_tiny_model):
    r = client.completions.create(model=served_tiny_model.model, prompt="def add(a, b):", max_tokens=6,
                                  temperature=0)
    assert r.object == "text_completion" and r.id and isinstance(r.created, int)
    assert r.model == served_tiny_model.model
    (choice,) = r.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_prompt_forms_agree(client, served_tiny_model):
    """Text, list of texts, token ids and lists of token ids name the same prompts."""
    ids = httpx.post(f"{served_tiny_model.root_url}/tokenize",
                     json={"model": served_tiny_model.model, "prompt": "import os"}).json()["tokens"]
    ids2 = httpx.post(f"{served_tiny_model.root_url}/tokenize",
                      json={"model": served_tiny_model.model, "prompt": "class A:"}).json()["tokens"]

    def texts(prompt) -> list[str]:
        r = client.completions.create(model=served_tiny_model.model, prompt=prompt, max_tokens=5, temperature=0)
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    single = texts("import os")
    assert texts(ids) == single
    both = texts(["import os", "class A:"])
    assert both[0] == single[0]
    assert texts([ids, ids2]) == both


def test_echo_logprobs_legacy_shape(client, served_tiny_model):
    """lm-eval's loglikelihood call: n prompt tokens echoed, then exactly one generated; the first is null."""
    ids = httpx.post(f"{served_tiny_model.root_url}/tokenize",
                     json={"prompt": "def add(a, b):\n    return a + b", "add_special_tokens": False}).json()["tokens"]
    r = client.completions.create(model=served_tiny_model.model, prompt=[ids], max_tokens=1, temperature=0,
                                  logprobs=1, echo=True, seed=1234)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) for x in lp.token_logprobs[1:])
    assert all(isinstance(d, dict) and d for d in lp.top_logprobs[1:])
    # The chosen token is always among the alternatives, so lm-eval's is_greedy check is well defined.
    for tok, val, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert top[tok] == val and max(top.values()) >= val
    assert len(lp.tokens) == len(lp.text_offset) == len(ids) + 1
    assert r.choices[0].text.startswith("def add(a, b):")


def test_completion_logprobs_without_echo(client, served_tiny_model):
    r = client.completions.create(model=served_tiny_model.model, prompt="x = ", max_tokens=4, temperature=0,
                                  logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(3 <= len(top) <= 4 for top in lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text


def test_chat_non_streaming_shape_and_logprobs(client, served_tiny_model):
    r = client.chat.completions.create(model=served_tiny_model.model, messages=MESSAGES, max_completion_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=2)
    assert r.object == "chat.completion"
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert isinstance(entry.token, str) and entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    plain = client.chat.completions.create(model=served_tiny_model.model, messages=MESSAGES, max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_chat_logprobs_true_without_top_logprobs(client, served_tiny_model):
    r = client.chat.completions.create(model=served_tiny_model.model, messages=MESSAGES, max_tokens=3,
                                       logprobs=True)
    assert all(e.top_logprobs == [] for e in r.choices[0].logprobs.content)


def test_max_tokens_is_honoured(client, served_tiny_model):
    r = client.chat.completions.create(model=served_tiny_model.model, messages=MESSAGES, max_tokens=7,
                                       temperature=1.0, seed=1, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"


def test_seed_reproducible_and_n_choices(client, served_tiny_model):
    kw = dict(model=served_tiny_model.model, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=42)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    assert first.choices[0].message.content == again.choices[0].message.content
    many = client.chat.completions.create(**kw, n=3, logprobs=True)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].message.content == first.choices[0].message.content
    assert len({c.message.content for c in many.choices}) > 1
    assert many.usage.completion_tokens == sum(len(c.logprobs.content) for c in many.choices)
    assert many.usage.prompt_tokens == first.usage.prompt_tokens  # the prompt counts once, not n times


def test_stop_sequences(client, served_tiny_model):
    base = client.completions.create(model=served_tiny_model.model, prompt="import sys\n", max_tokens=30,
                                     temperature=1.0, seed=5, extra_body={"ignore_eos": True}).choices[0].text
    stop = base[10:13]
    assert stop
    r = client.completions.create(model=served_tiny_model.model, prompt="import sys\n", max_tokens=30,
                                  temperature=1.0, seed=5, stop=[stop, "\x00never"],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == base[: base.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_streaming_chat_sync(client, served_tiny_model):
    stream = client.chat.completions.create(model=served_tiny_model.model, messages=MESSAGES, max_tokens=8,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = client.chat.completions.create(model=served_tiny_model.model, messages=MESSAGES, max_tokens=8,
                                          temperature=0)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == full.choices[0].finish_reason


def test_streaming_completion_async(served_tiny_model):
    async def main() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)
        stream = await client.completions.create(model=served_tiny_model.model, prompt="def f(x):", max_tokens=10,
                                                 temperature=0, stream=True)
        streamed = "".join([c.choices[0].text async for c in stream])
        whole = await client.completions.create(model=served_tiny_model.model, prompt="def f(x):", max_tokens=10,
                                                temperature=0)
        await client.close()
        return streamed, whole.choices[0].text

    streamed, whole = asyncio.run(main())
    assert streamed == whole


def test_async_chat_concurrent_requests(served_tiny_model):
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)
        rs = await asyncio.gather(*[
            client.chat.completions.create(model=served_tiny_model.model, messages=MESSAGES, max_tokens=6,
                                           temperature=0.7, seed=s)
            for s in (1, 2, 1)
        ])
        await client.close()
        return [r.choices[0].message.content for r in rs]

    a, b, c = asyncio.run(main())
    assert a == c


def test_streaming_echo_completion(client, served_tiny_model):
    stream = client.completions.create(model=served_tiny_model.model, prompt="import os", max_tokens=3,
                                       temperature=0, echo=True, stream=True)
    text = "".join(c.choices[0].text for c in stream)
    assert text.startswith("import os")


def _prefix_cache_hits(served) -> float:
    metrics = httpx.get(f"{served.root_url}/metrics", timeout=30).text
    (line,) = [ln for ln in metrics.splitlines() if ln.startswith("vllm:prefix_cache_hits_total{")]
    return float(line.rsplit(" ", 1)[1])


def test_echo_without_logprobs_reuses_the_prefix_cache(client, served_tiny_model):
    """Echo alone needs the prompt's text, not its logits: the prompt goes through the prefix cache like any other
    (only prompt logprobs must compute every position), and the answer is the prompt plus the same completion."""
    prompt = "def add(a, b):\n    return a + b\n\n" * 8
    plain = client.completions.create(model=served_tiny_model.model, prompt=prompt, max_tokens=4, temperature=0)
    before = _prefix_cache_hits(served_tiny_model)
    echoed = client.completions.create(model=served_tiny_model.model, prompt=prompt, max_tokens=4, temperature=0,
                                       echo=True)
    stream = client.completions.create(model=served_tiny_model.model, prompt=prompt, max_tokens=4, temperature=0,
                                       echo=True, stream=True)
    streamed = "".join(c.choices[0].text for c in stream)
    assert echoed.choices[0].text == prompt + plain.choices[0].text == streamed
    assert echoed.choices[0].logprobs is None
    assert _prefix_cache_hits(served_tiny_model) - before >= 2 * 16  # both echoes reused the cached blocks
