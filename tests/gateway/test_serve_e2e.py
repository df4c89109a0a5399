"""Through the gateway to a real `autarky serve` with a real (tiny) model, with both official SDKs."""

import anthropic
import openai
import pytest

from autarky.gateway.app import Gateway
from autarky.gateway.config import parse_config
from autarky.gateway.server import ServerThread, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway_to_serve(served_tiny_model, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here: a partner that is down
    config = parse_config({
        "store": f"sqlite:///{tmp_path}/gw.db",
        "require_keys": False,
        "retry": {"max_retries": 1, "backoff_base_s": 0.01},
        "providers": {
            "serve": {"base_url": served_tiny_model.base_url, "in_house": True, "max_data_class": "restricted",
                      "timeout_s": 60},
            "down": {"base_url": dead, "region": "us", "max_data_class": "internal"},
        },
        "models": {"tiny": {"provider": "serve", "upstream_id": served_tiny_model.model},
                   "partner": {"provider": "down", "usd_per_1m_input": 1.0, "usd_per_1m_output": 2.0}},
        "tasks": {"chat": {"candidates": ["partner", "tiny"]}},
    })
    gateway = Gateway(config)
    with ServerThread(gateway.app, log_level="critical") as server:
        yield gateway, server.url


def test_openai_sdk_through_gateway_to_autarky_serve(gateway_to_serve):
    _, url = gateway_to_serve
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="task:chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0)
    resp = raw.parse()
    assert raw.headers["x-autarky-model"] == "tiny" and raw.headers["x-autarky-provider"] == "serve"
    assert "failover from down" in raw.headers["x-autarky-route-reason"]
    assert resp.usage.completion_tokens >= 1 and resp.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                                 max_tokens=6, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == resp.choices[0].message.content  # greedy decoding: the same text both ways
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens
    done = client.completions.create(model="tiny", prompt="def f(", max_tokens=4, temperature=0)
    assert done.usage.completion_tokens >= 1


def test_anthropic_sdk_through_gateway_to_autarky_serve(gateway_to_serve):
    _, url = gateway_to_serve
    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    greedy = {"temperature": 0}  # sent as a body field (this SDK version has no keyword for it)
    msg = client.messages.create(model="tiny", max_tokens=6, messages=[{"role": "user", "content": "Hello"}],
                                 extra_body=greedy)
    assert msg.role == "assistant" and msg.usage.output_tokens >= 1
    with client.messages.stream(model="tiny", max_tokens=6, extra_body=greedy,
                                messages=[{"role": "user", "content": "Hello"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == msg.content[0].text
