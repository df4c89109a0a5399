"""Both official SDKs, unchanged, through the gateway to OpenAI-kind and Anthropic-kind upstreams."""

import anthropic
import httpx
import openai
import pytest

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sum the column please"}]


@pytest.mark.parametrize("model, upstream", [("small", "small-up"), ("claude", "claude-up")])
def test_openai_sdk_chat(make_gateway, faults, model, upstream):
    gw, url = make_gateway()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, max_tokens=5)
    resp = raw.parse()
    assert resp.model == model
    assert resp.choices[0].message.content.endswith(upstream)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 6 and resp.usage.completion_tokens == 5
    assert raw.headers["x-autarky-model"] == model
    assert raw.headers["x-autarky-provider"] == gw.config.models[model].provider
    assert "model requested" in raw.headers["x-autarky-route-reason"]
    assert faults.calls[-1][1] == upstream


@pytest.mark.parametrize("model, upstream", [("small", "small-up"), ("claude", "claude-up")])
def test_openai_sdk_stream(make_gateway, faults, model, upstream):
    _, url = make_gateway()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith(upstream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.model == model for c in chunks)
    # Without include_usage the client sees no usage chunk (the gateway asked upstream for one anyway).
    plain = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


@pytest.mark.parametrize("model, upstream", [("gpt", "gpt-up"), ("claude", "claude-up")])
def test_anthropic_sdk(make_gateway, faults, model, upstream):
    _, url = make_gateway()
    client = anthropic.Anthropic(base_url=url, api_key="unused")
    msg = client.messages.create(model=model, max_tokens=4, system="be brief",
                                 messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}])
    assert msg.model == model and msg.stop_reason == "end_turn"
    assert msg.content[0].text.endswith(upstream)
    assert msg.usage.input_tokens == 4 and msg.usage.output_tokens == 4
    with client.messages.stream(model=model, max_tokens=6, messages=[{"role": "user", "content": "hi"}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces).endswith(upstream)
    assert final.content[0].text == "".join(pieces)
    assert final.usage.output_tokens == 6


def test_completions_and_models(make_gateway, faults):
    _, url = make_gateway()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    done = client.completions.create(model="small", prompt="one two three", max_tokens=3)
    assert done.choices[0].text.endswith("small-up") and done.usage.prompt_tokens == 3
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="small", prompt="x", stream=True)
                       if c.choices)
    assert streamed.endswith("small-up")
    ids = {m.id for m in client.models.list()}
    assert {"small", "gpt", "claude", "task:spreadsheet"} <= ids
    with pytest.raises(openai.BadRequestError, match="no OpenAI-kind provider"):
        client.completions.create(model="claude", prompt="x")


def test_errors_use_the_right_envelope(make_gateway, faults):
    _, url = make_gateway()
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(url + "/v1/chat/completions", json={"model": "small", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError, match="unknown model 'nope'"):
        client.chat.completions.create(model="nope", messages=MESSAGES)
    aclient = anthropic.Anthropic(base_url=url, api_key="unused")
    with pytest.raises(anthropic.NotFoundError) as info:
        aclient.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(url + "/v1/messages", json={"model": "small", "max_tokens": 5,
                                               "messages": [{"role": "user", "content": [{"type": "image"}]}]})
    assert r.status_code == 400 and "unsupported content block 'image'" in r.json()["error"]["message"]
    assert faults.calls == []  # nothing invalid reached an upstream


def test_keys_required_when_configured(make_gateway, faults):
    _, url = make_gateway(require_keys=True)
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="small", messages=MESSAGES)
    r = httpx.post(url + "/v1/chat/completions", json={"model": "small", "messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert faults.calls == []


def test_metrics_count_requests_tokens_cost_and_retries(make_gateway, faults):
    _, url = make_gateway()
    faults.script("gpt-up", "500")
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    client.chat.completions.create(model="gpt", messages=MESSAGES, max_tokens=4)
    text = httpx.get(url + "/metrics").text
    assert 'autarky_gateway_requests_total{endpoint="chat",model="gpt",status="200"} 1.0' in text
    assert 'autarky_gateway_tokens_total{direction="completion",model="gpt"} 4.0' in text
    assert 'autarky_gateway_retries_total{provider="partner"} 1.0' in text
    # 6 prompt tokens at $1000/1M + 4 completion tokens at $2000/1M
    assert 'autarky_gateway_cost_usd_total{model="gpt"} 0.014' in text
    assert 'autarky_gateway_request_seconds_count{endpoint="chat"} 1.0' in text
