"""logit_bias, presence/frequency/repetition penalties and min_p over HTTP: each changes what it should, and a
request that uses none of them is unchanged when it shares a batch with ones that do."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)


def _complete(served, **fields) -> dict:
    body = {"model": served.model, "prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0, **fields}
    r = httpx.post(f"{served.base_url}/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _ids(served, text: str) -> list[int]:
    return httpx.post(f"{served.root_url}/tokenize", json={"model": served.model, "prompt": text,
                                                            "add_special_tokens": False}).json()["tokens"]


def test_logit_bias_forces_and_forbids(served_tiny_model):
    (token,) = _ids(served_tiny_model, "#")
    forced = _complete(served_tiny_model, logit_bias={str(token): 100})["choices"][0]["text"]
    assert forced == "#" * 12
    plain = _complete(served_tiny_model)["choices"][0]["text"]
    first = _ids(served_tiny_model, plain)[0]
    banned = _complete(served_tiny_model, logit_bias={str(first): -100})["choices"][0]["text"]
    assert _ids(served_tiny_model, banned)[0] != first


@pytest.mark.parametrize("fields", [{"repetition_penalty": 4.0}, {"presence_penalty": 2.0},
                                    {"frequency_penalty": 2.0}])
def test_penalties_break_greedy_loops(served_tiny_model, fields):
    plain = _complete(served_tiny_model, max_tokens=30)["choices"][0]["text"]
    penalized = _complete(served_tiny_model, max_tokens=30, **fields)["choices"][0]["text"]
    assert penalized != plain
    assert len(set(_ids(served_tiny_model, penalized))) >= len(set(_ids(served_tiny_model, plain)))


def test_min_p_one_keeps_only_the_top_token(served_tiny_model):
    greedy = _complete(served_tiny_model)["choices"][0]["text"]
    for seed in range(3):
        assert _complete(served_tiny_model, temperature=1.5, min_p=1.0, seed=seed)["choices"][0]["text"] == greedy


def test_plain_row_is_unchanged_by_adjusted_neighbours(served_tiny_model):
    url = f"{served_tiny_model.base_url}/completions"
    plain = {"model": served_tiny_model.model, "prompt": "import os", "max_tokens": 16, "temperature": 0}
    others = [{**plain, "repetition_penalty": 1.5, "logit_bias": {"7": 5}, "n": 2},
              {**plain, "presence_penalty": 1.0, "min_p": 0.2, "temperature": 1.0, "seed": 1}]

    async def main() -> tuple[str, str]:
        async with httpx.AsyncClient(timeout=60) as http:
            alone = (await http.post(url, json=plain)).json()["choices"][0]["text"]
            mixed = await asyncio.gather(http.post(url, json=others[0]), http.post(url, json=plain),
                                         http.post(url, json=others[1]))
            return alone, mixed[1].json()["choices"][0]["text"]

    alone, batched = asyncio.run(main())
    assert batched == alone


@pytest.mark.parametrize(("fields", "param"), [
    ({"logit_bias": {"99999": 1}}, "logit_bias"), ({"logit_bias": {"5": 500}}, "logit_bias"),
    ({"stop_token_ids": [5]}, "stop_token_ids"), ({"use_beam_search": True}, "use_beam_search"),
])
def test_fields_out_of_range_or_unsupported_are_400(served_tiny_model, fields, param):
    body = {"model": served_tiny_model.model, "prompt": "x", "max_tokens": 2, **fields}
    r = httpx.post(f"{served_tiny_model.base_url}/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
