"""SSE framing read off the raw socket with httpx: what clients that parse the stream themselves rely on."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from autarky.model.hf import load_hf_folder
from autarky.serve.registry import ModelRegistry
from autarky.serve.text import TextCodec
from fixtures.servers import running_server

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "user", "content": "Say something."}]


def read_events(url: str, payload: dict) -> tuple[httpx.Response, list[str]]:
    """POST and split the body into SSE events, asserting the framing of each: `data: <payload>` + blank line."""
    with httpx.stream("POST", url, json=payload, timeout=60) as response:
        body = b"".join(response.iter_bytes()).decode()
    assert body.endswith("\n\n"), "every event ends with a blank line"
    events = body[:-2].split("\n\n")
    data = []
    for event in events:
        assert event.startswith("data: "), f"not a data event: {event!r}"
        assert "\n" not in event, "one line per event"
        data.append(event[len("data: ") :])
    return response, data


def test_chat_stream_framing_n2_with_usage(served_tiny_model):
    response, data = read_events(
        f"{served_tiny_model.base_url}/chat/completions",
        {"model": served_tiny_model.model, "messages": MESSAGES, "max_tokens": 6, "n": 2, "stream": True,
         "temperature": 1.0, "seed": 3, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    chunks = [json.loads(d) for d in data[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and isinstance(c["created"], int)
        assert c["model"] == served_tiny_model.model
    *content_chunks, usage_chunk = chunks
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    for index in (0, 1):
        mine = [ch for c in content_chunks for ch in c["choices"] if ch["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert all("role" not in ch["delta"] for ch in mine[1:])
        assert all("finish_reason" in ch for ch in mine)
        assert [ch["finish_reason"] for ch in mine[:-1]] == [None] * (len(mine) - 1)
        assert mine[-1]["finish_reason"] in ("stop", "length") and mine[-1]["delta"] == {}
    assert all(c["usage"] is None for c in content_chunks)
    assert all(len(c["choices"]) == 1 for c in content_chunks)


def test_completion_stream_without_usage(served_tiny_model):
    response, data = read_events(
        f"{served_tiny_model.base_url}/completions",
        {"model": served_tiny_model.model, "prompt": "def main():", "max_tokens": 5, "stream": True,
         "temperature": 0},
    )
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    choices = [c["choices"][0] for c in chunks]
    assert all("finish_reason" in ch and "logprobs" in ch for ch in choices)
    assert choices[-1]["finish_reason"] in ("stop", "length") and choices[-1]["text"] == ""
    assert all(ch["finish_reason"] is None for ch in choices[:-1])


def test_stream_false_is_one_json_object(served_tiny_model):
    response = httpx.post(f"{served_tiny_model.base_url}/chat/completions",
                          json={"model": served_tiny_model.model, "messages": MESSAGES, "max_tokens": 3,
                                "stream": False}, timeout=60)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["object"] == "chat.completion" and "logprobs" in body["choices"][0]
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.fixture(scope="module")
def flaky_server(tiny_hf_model_dir: Path):
    """A server whose engine fails on its 4th forward pass of every request: a fault after the first bytes."""
    model, _ = load_hf_folder(tiny_hf_model_dir)
    registry = ModelRegistry()
    registry.add("flaky", model, TextCodec.from_folder(tiny_hf_model_dir), max_batch=4)
    engine = registry.models["flaky"].engine
    real_forward, calls = engine._forward, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise RuntimeError("simulated accelerator fault")
        return real_forward(*args, **kwargs)

    engine._forward = flaky
    with running_server(registry) as server:
        calls["n"] = 0
        yield server, calls


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_mid_stream_failure_is_in_band_then_done(flaky_server, route):
    server, calls = flaky_server
    calls["n"] = 0
    payload = {"model": "flaky", "max_tokens": 20, "stream": True, "temperature": 0, "ignore_eos": True}
    payload.update({"messages": MESSAGES} if route.startswith("chat") else {"prompt": "import os"})
    response, data = read_events(f"{server.url}/v1/{route}", payload)
    assert response.status_code == 200
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])
    assert set(error) == {"error"}
    assert "simulated accelerator fault" in error["error"]["message"]
    assert {"message", "type", "param", "code"} <= set(error["error"])
    assert any("choices" in json.loads(d) for d in data[:-2]), "the failure came after some content"


def test_failure_before_streaming_is_a_500_envelope(flaky_server):
    server, calls = flaky_server
    calls["n"] = 0
    r = httpx.post(f"{server.url}/v1/completions",
                   json={"model": "flaky", "prompt": "x", "max_tokens": 10, "ignore_eos": True}, timeout=60)
    assert r.status_code == 500
    assert "simulated accelerator fault" in r.json()["error"]["message"]


@pytest.mark.parametrize("path,payload", [
    ("chat/completions", {"messages": MESSAGES}),
    ("completions", {"prompt": "def f(x):"}),
])
def test_continuous_usage_stats_put_the_usage_so_far_on_every_chunk(served_tiny_model, path, payload):
    """vLLM's `stream_options.continuous_usage_stats`: a proxy (the gateway's Anthropic stream) learns the prompt's
    size from the first chunk, and completion tokens count up to the final usage."""
    _, data = read_events(
        f"{served_tiny_model.base_url}/{path}",
        {"model": served_tiny_model.model, **payload, "max_tokens": 5, "stream": True, "temperature": 0.0,
         "ignore_eos": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    )
    chunks = [json.loads(d) for d in data[:-1]]
    usages = [c["usage"] for c in chunks]
    assert all(u is not None for u in usages)
    assert len({u["prompt_tokens"] for u in usages}) == 1 and usages[0]["prompt_tokens"] > 0
    completed = [u["completion_tokens"] for u in usages]
    assert completed == sorted(completed) and completed[-1] == 5
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in usages)
    _, plain = read_events(
        f"{served_tiny_model.base_url}/{path}",
        {"model": served_tiny_model.model, **payload, "max_tokens": 5, "stream": True, "temperature": 0.0,
         "ignore_eos": True, "stream_options": {"include_usage": True}},
    )
    assert all(json.loads(d)["usage"] is None for d in plain[:-2])
