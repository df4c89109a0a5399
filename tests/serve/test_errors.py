"""Bad requests of every kind: the right status and the OpenAI error envelope, never FastAPI's 422 shape."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import httpx
import openai
import pytest

from autarky.contracts.wire import ContextOverflow
from autarky.model.hf import load_hf_folder
from autarky.serve.registry import ModelRegistry
from autarky.serve.text import TextCodec
from fixtures.servers import running_server

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_envelope(response: httpx.Response, status: int, extra: frozenset[str] = frozenset()) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code", *extra}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    return error


def post(endpoint, path: str, payload: dict | str) -> httpx.Response:
    kwargs = {"content": payload, "headers": {"content-type": "application/json"}} if isinstance(payload, str) \
        else {"json": payload}
    return httpx.post(f"{endpoint.base_url}/{path}", timeout=60, **kwargs)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "tiny"}, "prompt"),
        ({"model": "tiny", "prompt": {"not": "a prompt"}}, "prompt"),
        ({"model": "tiny", "prompt": "x", "temperature": 5}, "temperature"),
        ({"model": "tiny", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "n": 0}, "n"),
        ({"model": "tiny", "prompt": "x", "logprobs": 50}, "logprobs"),
        ({"model": "tiny", "prompt": "x", "top_p": 0}, "top_p"),
        ({"model": "tiny", "prompt": []}, "prompt"),
        ({"model": "tiny", "prompt": ""}, "prompt"),
    ],
)
def test_completion_validation_is_400(served_tiny_model, payload, param):
    error = assert_envelope(post(served_tiny_model, "completions", payload), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"].split(".")[0] == param


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "tiny", "messages": []},
        {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
        {"model": "tiny", "messages": "hello"},
        {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 0},
        {"model": "tiny", "messages": MESSAGES, "top_logprobs": 3},  # needs logprobs=true
        {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    ],
)
def test_chat_validation_is_400(served_tiny_model, payload):
    assert_envelope(post(served_tiny_model, "chat/completions", payload), 400)


def test_malformed_json_is_400(served_tiny_model):
    assert_envelope(post(served_tiny_model, "chat/completions", '{"model": "tiny", "messages": ['), 400)


def test_unknown_model_is_404(served_tiny_model):
    error = assert_envelope(post(served_tiny_model, "completions", {"model": "gpt-9", "prompt": "x"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    client = openai.OpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert "gpt-9" in info.value.message


def test_unknown_route_is_an_envelope(served_tiny_model):
    assert_envelope(httpx.get(f"{served_tiny_model.base_url}/engines"), 404)


def test_context_overflow_is_400_not_200(served_tiny_model):
    overflow = frozenset({"context"})  # the numbers travel as fields (autarky.contracts.wire.ContextOverflow)
    long_ids = [[5] * 300]  # the tiny model's context is 256
    error = assert_envelope(post(served_tiny_model, "completions", {"model": "tiny", "prompt": long_ids}), 400,
                            overflow)
    assert error["code"] == "context_length_exceeded"
    budget = {"model": "tiny", "prompt": "x", "max_tokens": 1000}
    assert assert_envelope(post(served_tiny_model, "completions", budget), 400, overflow)["code"] == \
        "context_length_exceeded"
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]}
    assert assert_envelope(post(served_tiny_model, "chat/completions", chat), 400, overflow)["code"] == \
        "context_length_exceeded"
    client = openai.OpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=long_ids, stream=True)


def test_context_overflow_fields_reach_the_client(served_tiny_model):
    """The engine refuses a total beyond the context; a chat prompt with no max_tokens that leaves no room for one
    token is refused before it. Both say so through the one contract: the engine's wording, the numbers as fields."""
    response = post(served_tiny_model, "completions", {"model": "tiny", "prompt": [[5, 6]], "max_tokens": 1000})
    overflow = ContextOverflow.from_body(response.json())
    assert overflow == ContextOverflow(max_context=256, prompt_tokens=2, max_tokens=1000)
    assert response.json() == overflow.envelope(param="messages")
    assert overflow.message.startswith("This model's maximum context length is 256 tokens; the request asks for 1002")
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]}
    overflow = ContextOverflow.from_body(post(served_tiny_model, "chat/completions", chat).json())
    assert overflow.max_context == 256 and overflow.prompt_tokens > 256 and overflow.max_tokens == 1
    client = openai.OpenAI(base_url=served_tiny_model.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**chat)
    assert ContextOverflow.from_body({"error": info.value.body}) == overflow  # the SDK keeps error.context


def test_out_of_vocabulary_token_ids_are_400(served_tiny_model):
    assert_envelope(post(served_tiny_model, "completions", {"model": "tiny", "prompt": [1, 2, 99999]}), 400)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"min_tokens": 3}, "min_tokens"),
        ({"logit_bias": {"token": 10}}, "logit_bias"),
    ],
)
def test_fields_we_cannot_honour_are_400(served_tiny_model, extra, param):
    error = assert_envelope(post(served_tiny_model, "chat/completions", {"model": "tiny", "messages": MESSAGES,
                                                                         "max_tokens": 2, **extra}), 400)
    assert error["param"] == param


def test_unknown_harmless_fields_are_accepted_and_logged(served_tiny_model, caplog):
    payload = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "metadata": {"k": "v"},
               "some_vendor_flag": True, "response_format": {"type": "text"}, "tools": [], "user": "u1"}
    with caplog.at_level(logging.WARNING, logger="autarky.serve"):
        r = post(served_tiny_model, "chat/completions", payload)
    assert r.status_code == 200, r.text
    assert any("some_vendor_flag" in rec.getMessage() and "ignored" in rec.getMessage() for rec in caplog.records)


@pytest.fixture(scope="module")
def tiny_model_and_codec(tiny_hf_model_dir: Path):
    model, _ = load_hf_folder(tiny_hf_model_dir)
    return model, TextCodec.from_folder(tiny_hf_model_dir)


def test_full_queue_is_429(tiny_model_and_codec):
    model, codec = tiny_model_and_codec
    registry = ModelRegistry()
    registry.add("one", model, codec, max_batch=1, max_queue=1)
    engine = registry.models["one"].engine
    # Hold the engine thread before it admits anything, so the queue fills deterministically.
    gate, real_step = threading.Event(), engine._step
    engine._step = lambda: (gate.wait(60), real_step())
    payload = {"model": "one", "prompt": "x", "max_tokens": 4}

    async def main(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            queued = asyncio.ensure_future(http.post("/v1/completions", json=payload))
            for _ in range(1000):
                if engine._queued == 1:
                    break
                await asyncio.sleep(0.005)
            refused = await http.post("/v1/completions", json=payload)
            assert_envelope(refused, 429)
            assert refused.json()["error"]["type"] == "rate_limit_error"
            gate.set()
            assert (await queued).status_code == 200  # the queued request still completes
            assert (await http.post("/v1/completions", json=payload)).status_code == 200

    try:
        with running_server(registry) as server:
            asyncio.run(main(server.url))
    finally:
        gate.set()


def test_health_is_503_while_loading(tiny_model_and_codec):
    model, codec = tiny_model_and_codec
    release = threading.Event()

    class SlowRegistry(ModelRegistry):
        def load(self) -> None:
            release.wait(60)
            self.add("late", model, codec)
            self.ready.set()

    registry = SlowRegistry(specs=[])
    registry.specs = ["placeholder"]  # non-empty: the app loads in the background and reports 503 meanwhile
    with running_server(registry, wait_for_models=False) as server:
        health = httpx.get(f"{server.url}/health")
        assert_envelope(health, 503)
        assert_envelope(httpx.post(f"{server.url}/v1/completions", json={"model": "late", "prompt": "x"}), 503)
        release.set()
        assert registry.ready.wait(30)
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert httpx.post(f"{server.url}/v1/completions",
                          json={"model": "late", "prompt": "x", "max_tokens": 2}).status_code == 200


def test_api_key_is_required_when_set(tiny_model_and_codec):
    from autarky.serve.server import Server

    model, codec = tiny_model_and_codec
    registry = ModelRegistry()
    registry.add("keyed", model, codec, max_batch=2)
    server = Server(registry, api_key="sekret").start()
    try:
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert_envelope(httpx.get(f"{server.url}/v1/models"), 401)
        right = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sekret", max_retries=0)
        assert right.completions.create(model="keyed", prompt="x", max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(f"{server.url}/health").status_code == 200  # probes need no key
    finally:
        server.stop()
