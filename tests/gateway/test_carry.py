"""Everything else a request and its answer carry across formats: images, system prompts with cache_control,
cached-token usage, exact stop reasons, the real input count in message_start, and count_tokens."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

PNG = "iVBORw0KGgo="
EPHEMERAL = {"type": "ephemeral"}


def _openai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _anthropic(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)


def test_images_cross_both_ways(make_gateway, faults):
    _, url = make_gateway()
    _openai(url).chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}}]}])
    assert faults.bodies[-1][1]["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.png"}}]
    _anthropic(url).messages.create(model="gpt", max_tokens=5, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "and this?"}]}])
    assert faults.bodies[-1][1]["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "and this?"}]


def test_cache_control_reaches_an_anthropic_upstream_and_cached_tokens_come_back(make_gateway, faults):
    _, url = make_gateway()
    system = [{"type": "text", "text": "long rules", "cache_control": EPHEMERAL}, {"type": "text", "text": "more"}]
    tools = [{"name": "f", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "one two three", "cache_control": EPHEMERAL}]}]
    msg = _anthropic(url).messages.create(model="claude", max_tokens=5, system=system, tools=tools,
                                          tool_choice={"type": "none"}, messages=messages)
    sent = faults.bodies[-1][1]
    assert sent["system"] == system and sent["tools"] == tools and sent["messages"] == messages
    assert msg.usage.cache_read_input_tokens == 2 and msg.usage.input_tokens == 4  # 6 prompt words, 2 cached
    with _anthropic(url).messages.stream(model="claude", max_tokens=5, system=system, messages=messages) as s:
        final = s.get_final_message()
    assert final.usage.cache_read_input_tokens == 2
    # to an OpenAI-kind upstream: the hints are dropped (it has no field for them), the text is not
    _anthropic(url).messages.create(model="gpt", max_tokens=5, system=system, messages=messages)
    sent = faults.bodies[-1][1]
    assert "cache_control" not in str(sent) and sent["messages"][0]["content"] == [
        {"type": "text", "text": "long rules"}, {"type": "text", "text": "more"}]


def test_cached_tokens_reach_openai_clients(make_gateway, faults):
    _, url = make_gateway()
    resp = _openai(url).chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "one two three", "cache_control": EPHEMERAL}]}])
    assert resp.usage.prompt_tokens == 3 and resp.usage.prompt_tokens_details.cached_tokens == 2
    resp = _openai(url).chat.completions.create(model="gpt", messages=[{"role": "user", "content": "one two"}],
                                                prompt_cache_key="k")
    assert resp.usage.prompt_tokens_details.cached_tokens == 2
    msg = httpx.post(url + "/v1/messages", json={"model": "gpt", "max_tokens": 5, "messages": [
        {"role": "user", "content": "one two three"}]}).json()
    assert msg["usage"] == {"input_tokens": 3, "output_tokens": 5}


@pytest.mark.parametrize("fault, anthropic_stop, openai_finish", [
    ("length", "max_tokens", "length"), ("filter", "refusal", "content_filter"), ("ok", "end_turn", "stop")])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_reasons_map_exactly_through_the_gateway(make_gateway, faults, fault, anthropic_stop, openai_finish,
                                                      stream):
    _, url = make_gateway()
    faults.script("gpt-up", fault)
    faults.script("claude-up", fault)
    kwargs = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        with _anthropic(url).messages.stream(model="gpt", **kwargs) as s:
            stop = s.get_final_message().stop_reason
        chunks = list(_openai(url).chat.completions.create(model="claude", stream=True, **kwargs))
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    else:
        stop = _anthropic(url).messages.create(model="gpt", **kwargs).stop_reason
        finish = _openai(url).chat.completions.create(model="claude", **kwargs).choices[0].finish_reason
    assert (stop, finish) == (anthropic_stop, openai_finish)


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_stop_sequences_are_named(make_gateway, faults, model):
    _, url = make_gateway()
    msg = _anthropic(url).messages.create(model=model, max_tokens=8, stop_sequences=["w2"],
                                          messages=[{"role": "user", "content": "hi"}])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "w2"
    assert msg.content[0].text == "w0 w1"
    with _anthropic(url).messages.stream(model=model, max_tokens=8, stop_sequences=["w2"],
                                         messages=[{"role": "user", "content": "hi"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "w2"


@pytest.mark.parametrize("model, real_at_start", [("claude", True), ("small", True), ("gpt", False)])
def test_message_start_carries_the_real_input_count(make_gateway, faults, model, real_at_start):
    """Anthropic upstreams send it in message_start; in-house OpenAI-kind servers on every chunk
    (continuous_usage_stats, on by default for in_house); other OpenAI-kind partners only at the end."""
    _, url = make_gateway()
    events = list(_anthropic(url).messages.create(model=model, max_tokens=4, stream=True,
                                                  messages=[{"role": "user", "content": "one two three four five"}]))
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == (5 if real_at_start else 0)
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.usage.input_tokens == 5 and delta.usage.output_tokens == 4
    # the OpenAI client that did not ask for usage still gets none mid-stream
    chunks = list(_openai(url).chat.completions.create(model=model, stream=True, max_tokens=3,
                                                       messages=[{"role": "user", "content": "a b"}]))
    assert all(c.usage is None for c in chunks)


def test_count_tokens_forwarded_to_anthropic_or_estimated(make_gateway, faults):
    _, url = make_gateway()
    client = _anthropic(url)
    counted = client.messages.count_tokens(model="claude", system="be brief",
                                           messages=[{"role": "user", "content": "one two three"}])
    assert counted.input_tokens == 5
    assert faults.bodies[-1] == ("/v1/messages/count_tokens", {
        "model": "claude-up", "system": "be brief", "messages": [{"role": "user", "content": "one two three"}]})
    r = httpx.post(url + "/v1/messages/count_tokens", json={"model": "gpt", "messages": [
        {"role": "user", "content": "one two three"}]})
    assert r.status_code == 200 and r.headers["x-autarky-token-count"] == "estimate"
    assert r.json()["input_tokens"] > 0
    r = httpx.post(url + "/v1/messages/count_tokens", json={"model": "nope", "messages": [
        {"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["type"] == "error"
    assert len(faults.calls) == 1
