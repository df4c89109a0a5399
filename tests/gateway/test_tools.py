"""Tools through the gateway with both official SDKs, streamed and not, against upstreams of both kinds (the
partner simulator: `gpt` speaks OpenAI, `claude` Anthropic), and what reached the upstream (Faults.bodies)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]},
                                            "days": {"type": "integer", "minimum": 3}}, "required": ["city"]}
CLOCK = {"type": "object", "properties": {"tz": {"type": "string"}}}
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
                {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER},
                   {"name": "get_time", "input_schema": CLOCK}]
EXPECTED = [("get_weather", {"city": "Paris", "days": 3}), ("get_time", {"tz": "x"})]
UPSTREAMS = ["gpt", "claude"]


def _openai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _anthropic(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)


def _openai_stream_calls(stream) -> tuple[list[tuple[str, str, dict]], str | None]:
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or ():
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                call["name"] += (d.function.name or "") if d.function else ""
                call["arguments"] += (d.function.arguments or "") if d.function else ""
    return [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())], finish


def _sent(faults) -> dict:
    """The last body the upstream received."""
    return faults.bodies[-1][1]


@pytest.mark.parametrize("model", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_parallel_tool_calls(make_gateway, faults, model, stream):
    _, url = make_gateway()
    kwargs = {"model": model, "messages": [{"role": "user", "content": "weather and time?"}], "tools": OPENAI_TOOLS}
    if stream:
        calls, finish = _openai_stream_calls(_openai(url).chat.completions.create(**kwargs, stream=True))
    else:
        resp = _openai(url).chat.completions.create(**kwargs)
        finish = resp.choices[0].finish_reason
        calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in resp.choices[0].message.tool_calls]
    assert finish == "tool_calls"
    assert [(n, a) for _, n, a in calls] == EXPECTED and all(cid for cid, _, _ in calls)
    sent = _sent(faults)
    if model == "claude":
        assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
        assert sent["tools"][0]["input_schema"] == WEATHER and "tool_choice" not in sent
    else:
        assert sent["tools"] == OPENAI_TOOLS


@pytest.mark.parametrize("model", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_parallel_tool_use(make_gateway, faults, model, stream):
    _, url = make_gateway()
    kwargs = {"model": model, "max_tokens": 50, "tools": ANTHROPIC_TOOLS,
              "messages": [{"role": "user", "content": "weather and time?"}]}
    client = _anthropic(url)
    if stream:
        with client.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kwargs)
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in uses] == EXPECTED and all(b.id for b in uses)
    sent = _sent(faults)
    if model == "gpt":
        assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
        assert sent["tools"][0]["function"]["parameters"] == WEATHER
    else:
        assert sent["tools"] == ANTHROPIC_TOOLS


OPENAI_HISTORY = [
    {"role": "user", "content": "weather and time?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
]
ANTHROPIC_HISTORY = [
    {"role": "user", "content": "weather and time?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {"tz": "CET"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "no clock"}],
         "is_error": True}]},
]


@pytest.mark.parametrize("model", UPSTREAMS)
def test_openai_tool_history_reaches_the_upstream_intact(make_gateway, faults, model):
    _, url = make_gateway()
    resp = _openai(url).chat.completions.create(model=model, messages=OPENAI_HISTORY, tools=OPENAI_TOOLS)
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.content  # answers the results
    sent = _sent(faults)
    if model == "gpt":
        assert sent["messages"] == OPENAI_HISTORY
        return
    assert sent["messages"] == [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {"tz": "CET"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "rain"},
                                     {"type": "tool_result", "tool_use_id": "call_2", "content": "12:00"}]}]


@pytest.mark.parametrize("model", UPSTREAMS)
def test_anthropic_tool_history_reaches_the_upstream_intact(make_gateway, faults, model):
    """LiteLLM #25669: tool history sent to the messages API was destroyed on the way to the upstream."""
    _, url = make_gateway()
    msg = _anthropic(url).messages.create(model=model, max_tokens=20, tools=ANTHROPIC_TOOLS,
                                          messages=ANTHROPIC_HISTORY)
    assert msg.stop_reason == "end_turn" and msg.content[0].type == "text"
    sent = _sent(faults)
    if model == "claude":
        # the same blocks; a lone text block inside a tool_result travels as the equivalent string
        results = ANTHROPIC_HISTORY[2]["content"]
        assert sent["messages"][:2] == ANTHROPIC_HISTORY[:2]
        assert sent["messages"][2]["content"] == [results[0], {**results[1], "content": "no clock"}]
        return
    assert sent["messages"] == [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "no clock"}]  # is_error has no OpenAI field


@pytest.mark.parametrize("model", UPSTREAMS)
def test_streamed_arguments_are_never_lost(make_gateway, faults, model):
    """LiteLLM #27469: tool arguments lost in conversion (streamed, across formats, both directions)."""
    _, url = make_gateway()
    tools = [{"name": "plan", "input_schema": {"type": "object", "properties": {
        "steps": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}},
                  "minItems": 2}, "title": {"type": "string", "minLength": 5}}}}]
    with _anthropic(url).messages.stream(model=model, max_tokens=50, tools=tools,
                                         messages=[{"role": "user", "content": "plan"}]) as s:
        msg = s.get_final_message()
    assert msg.content[-1].input == {"steps": [{"n": 1}, {"n": 1}], "title": "xxxxx"}
    openai_tools = [{"type": "function", "function": {"name": "plan", "parameters": tools[0]["input_schema"]}}]
    calls, _ = _openai_stream_calls(_openai(url).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "plan"}], tools=openai_tools, stream=True))
    assert calls[0][2] == {"steps": [{"n": 1}, {"n": 1}], "title": "xxxxx"}


@pytest.mark.parametrize("model", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_none_on_the_messages_api(make_gateway, faults, model, stream):
    """LiteLLM #24443: tool_choice none on the messages API was not honoured."""
    _, url = make_gateway()
    kwargs = {"model": model, "max_tokens": 20, "tools": ANTHROPIC_TOOLS, "tool_choice": {"type": "none"},
              "messages": [{"role": "user", "content": "weather?"}]}
    if stream:
        with _anthropic(url).messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = _anthropic(url).messages.create(**kwargs)
    assert msg.stop_reason == "end_turn" and [b.type for b in msg.content] == ["text"]
    assert _sent(faults)["tool_choice"] == ("none" if model == "gpt" else {"type": "none"})


@pytest.mark.parametrize("model", UPSTREAMS)
def test_named_choice_and_disabled_parallel_calls(make_gateway, faults, model):
    _, url = make_gateway()
    msg = _anthropic(url).messages.create(model=model, max_tokens=20, tools=ANTHROPIC_TOOLS,
                                          tool_choice={"type": "tool", "name": "get_time"},
                                          messages=[{"role": "user", "content": "time?"}])
    assert [(b.name, b.input) for b in msg.content] == [("get_time", {"tz": "x"})]
    msg = _anthropic(url).messages.create(model=model, max_tokens=20, tools=ANTHROPIC_TOOLS,
                                          tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                          messages=[{"role": "user", "content": "weather?"}])
    assert [b.name for b in msg.content] == ["get_weather"]
    sent = _sent(faults)
    if model == "gpt":
        assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    else:
        assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    resp = _openai(url).chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                                tools=OPENAI_TOOLS, parallel_tool_calls=False,
                                                tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in resp.choices[0].message.tool_calls] == ["get_time"]


@pytest.mark.parametrize("model", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_valid_json(make_gateway, faults, model, stream):
    _, url = make_gateway()
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "slides": {
        "type": "array", "items": {"type": "string"}}}, "required": ["title", "slides"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "deck", "schema": schema, "strict": True}}
    kwargs = {"model": model, "messages": [{"role": "user", "content": "a deck"}], "response_format": fmt}
    if stream:
        chunks = list(_openai(url).chat.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        resp = _openai(url).chat.completions.create(**kwargs)
        text, finish = resp.choices[0].message.content, [resp.choices[0].finish_reason]
    assert json.loads(text) == {"title": "x", "slides": ["x"]} and finish == ["stop"]
    sent = _sent(faults)
    if model == "gpt":
        assert sent["response_format"] == fmt
    else:
        assert sent["tools"][0]["input_schema"] == schema
        assert sent["tool_choice"] == {"type": "tool", "name": "deck"}


def test_json_with_tools_to_an_anthropic_upstream_is_a_400(make_gateway, faults):
    _, url = make_gateway()
    with pytest.raises(openai.BadRequestError, match="response_format"):
        _openai(url).chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                             tools=OPENAI_TOOLS, response_format={"type": "json_object"})
    assert faults.calls == []
