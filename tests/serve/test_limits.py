"""No request can stall, bloat or crash the server: body and per-request limits, work off the event loop, and a 4xx
envelope (never a 500) for every malformed value."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.fixture(scope="module")
def guarded(tiny_hf_model_dir) -> Iterator[str]:
    """The tiny model behind an API key and a 1 MB body limit."""
    from autarky.serve.registry import ModelRegistry, ServedModelSpec
    from autarky.serve.server import Server

    spec = ServedModelSpec(source=str(tiny_hf_model_dir), name="tiny", max_batch=4, max_queue=16)
    server = Server(ModelRegistry([spec]), api_key="sekret", max_body_mb=1).start()
    try:
        yield server.url
    finally:
        server.stop()


KEY = {"authorization": "Bearer sekret"}


def test_body_over_the_limit_is_413_before_parsing(guarded):
    big = {"model": "tiny", "prompt": "x" * (2 << 20)}
    error = assert_envelope(httpx.post(f"{guarded}/v1/completions", json=big, headers=KEY, timeout=60), 413)
    assert "body" in error["message"]


def test_chunked_body_over_the_limit_is_413(guarded):
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(f"{guarded}/v1/completions", content=chunks(),
                          headers={**KEY, "content-type": "application/json"}, timeout=60)
    assert_envelope(response, 413)


@pytest.mark.parametrize("path", ["tokenize", "detokenize"])
def test_tokenizer_routes_want_the_key(guarded, path):
    payload = {"prompt": "hi"} if path == "tokenize" else {"tokens": [1, 2]}
    assert_envelope(httpx.post(f"{guarded}/{path}", json=payload, timeout=30), 401)
    assert httpx.post(f"{guarded}/{path}", json=payload, headers=KEY, timeout=30).status_code == 200


def test_non_ascii_authorization_is_401(guarded):
    headers = [(b"authorization", "Bearer s\u00e9kret \u2603".encode())]
    assert_envelope(httpx.post(f"{guarded}/v1/completions", json={"model": "tiny", "prompt": "x"},
                               headers=headers, timeout=30), 401)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": ["s"] * 1000}, "stop"),
        ({"stop": "s" * 100_000}, "stop"),
        ({"logit_bias": {str(i): 1.0 for i in range(5000)}}, "logit_bias"),
        ({"n": 65}, "n"),
        ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(500)]}, "tools"),
    ],
)
def test_per_request_work_is_bounded(served_tiny_model, extra, param):
    payload = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1, **extra}
    response = httpx.post(f"{served_tiny_model.base_url}/chat/completions", json=payload, timeout=60)
    error = assert_envelope(response, 400)
    assert error["param"].split(".")[0] == param


def test_completion_prompt_count_is_bounded(served_tiny_model):
    payload = {"model": "tiny", "prompt": ["x"] * 1000, "max_tokens": 1}
    error = assert_envelope(httpx.post(f"{served_tiny_model.base_url}/completions", json=payload, timeout=60), 400)
    assert error["param"] == "prompt"


def test_health_answers_while_a_big_prompt_is_tokenized(served_tiny_model, monkeypatch):
    from autarky.serve.text import TextCodec

    real = TextCodec.encode

    def slow(self, text, *args, **kwargs):  # stands in for a big-but-allowed prompt's tokenization
        if len(text) > 1000:
            time.sleep(3)
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(TextCodec, "encode", slow)
    thread = threading.Thread(target=httpx.post, args=(f"{served_tiny_model.root_url}/tokenize",),
                              kwargs={"json": {"prompt": "word " * 1000}, "timeout": 60})
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert httpx.get(f"{served_tiny_model.root_url}/health", timeout=30).status_code == 200
    assert time.monotonic() - started < 1.5
    thread.join()


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("chat/completions", {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": "lots"}),
        ("chat/completions", {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": [1]}),
        ("chat/completions", {"model": "tiny", "messages": MESSAGES, "stream_options": "yes"}),
        ("chat/completions", {"model": "tiny", "messages": MESSAGES, "stop": 5}),
        ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}),
        ("chat/completions", {"model": "tiny", "messages": [None]}),
        ("completions", {"model": "tiny", "prompt": [-1, 2], "max_tokens": 1}),
        ("completions", {"model": "tiny", "prompt": [2**70], "max_tokens": 1}),
        ("completions", {"model": "tiny", "prompt": [[1], [10**9]], "max_tokens": 1}),
    ],
)
def test_malformed_values_are_400(served_tiny_model, path, payload):
    assert_envelope(httpx.post(f"{served_tiny_model.base_url}/{path}", json=payload, timeout=60), 400)


@pytest.mark.parametrize("path", ["v1/completions", "v1/chat/completions", "tokenize"])
def test_lone_surrogates_are_400(served_tiny_model, path):
    text = '"a\\ud800b"'
    body = {"v1/completions": f'{{"model": "tiny", "prompt": {text}, "max_tokens": 1}}',
            "v1/chat/completions": f'{{"model": "tiny", "messages": [{{"role": "user", "content": {text}}}]}}',
            "tokenize": f'{{"prompt": {text}}}'}[path]
    response = httpx.post(f"{served_tiny_model.root_url}/{path}", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert_envelope(response, 400)


def test_missing_content_type_is_still_json(served_tiny_model):
    body = '{"model": "tiny", "prompt": "hi", "max_tokens": 1}'
    response = httpx.post(f"{served_tiny_model.base_url}/completions", content=body, timeout=60)
    assert response.status_code == 200, response.text


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                max_size=3), max_leaves=8)
FIELDS = st.sampled_from(["max_completion_tokens", "max_tokens", "stream_options", "stop", "messages", "n",
                          "logit_bias", "tools", "tool_choice", "response_format", "seed", "logprobs"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=FIELDS, value=JSON)
def test_fuzzed_fields_never_500(served_tiny_model, field, value):
    payload = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1, field: value}
    response = httpx.post(f"{served_tiny_model.base_url}/chat/completions", json=payload, timeout=60)
    assert response.status_code < 500, response.text
