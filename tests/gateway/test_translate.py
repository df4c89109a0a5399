"""OpenAI <-> Anthropic translation without a server: round trips (property tests) keep every tool call, argument
and tool result; stream translators keep every argument fragment; usage and stop reasons map exactly."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autarky.gateway.capabilities import needs, prompt_tokens
from autarky.gateway.errors import GatewayError
from autarky.gateway.translate import (
    AnthropicToOpenAIChunks,
    OpenAIToAnthropicStream,
    anthropic_request_to_openai,
    anthropic_response_to_openai,
    openai_only,
    openai_request_to_anthropic,
    openai_response_to_anthropic,
)
from autarky.gateway.translate.blocks import usage_to_anthropic, usage_to_openai

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
arguments = st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=4)
names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
ids = st.from_regex(r"[A-Za-z0-9_]{4,12}", fullmatch=True)
texts = st.text(min_size=1, max_size=20)


@st.composite
def openai_conversations(draw) -> list[dict]:
    messages: list[dict] = [{"role": "user", "content": draw(texts)}]
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 3))
        call_ids = draw(st.lists(ids, min_size=n, max_size=n, unique=True))
        calls = [{"id": f"call_{cid}", "type": "function",
                  "function": {"name": draw(names), "arguments": orjson.dumps(draw(arguments)).decode()}}
                 for cid in call_ids]
        messages.append({"role": "assistant", "content": draw(st.none() | texts), "tool_calls": calls})
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": draw(texts)})
        if draw(st.booleans()):
            messages.append({"role": "user", "content": draw(texts)})
    return messages


def _calls(messages: list[dict]) -> list[tuple]:
    return [(c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
            for m in messages for c in m.get("tool_calls") or ()]


def _results(messages: list[dict]) -> list[tuple]:
    return [(m["tool_call_id"], m["content"], m.get("is_error")) for m in messages if m["role"] == "tool"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(openai_conversations())
def test_openai_to_anthropic_to_openai_keeps_every_call_argument_and_result(messages):
    anthropic = openai_request_to_anthropic({"messages": messages}, "up", 100)
    back = anthropic_request_to_openai({**anthropic, "model": "m"})["messages"]
    assert _calls(back) == _calls(messages)
    assert _results(back) == _results(messages)
    # every tool result sits in the user turn right after the assistant turn that made its call
    for i, m in enumerate(anthropic["messages"]):
        uses = {b["id"] for b in m["content"] if isinstance(m["content"], list) and b["type"] == "tool_use"}
        if uses:
            following = anthropic["messages"][i + 1]["content"]
            assert uses == {b["tool_use_id"] for b in following if b["type"] == "tool_result"}


@st.composite
def anthropic_conversations(draw) -> list[dict]:
    messages: list[dict] = [{"role": "user", "content": draw(texts)}]
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 3))
        use_ids = draw(st.lists(ids, min_size=n, max_size=n, unique=True))
        uses = [{"type": "tool_use", "id": f"toolu_{u}", "name": draw(names), "input": draw(arguments)}
                for u in use_ids]
        lead = [{"type": "text", "text": draw(texts)}] if draw(st.booleans()) else []
        messages.append({"role": "assistant", "content": lead + uses})
        results = []
        for use in uses:
            block = {"type": "tool_result", "tool_use_id": use["id"],
                     "content": draw(texts | st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts),
                                                      min_size=2, max_size=2))}
            if draw(st.booleans()):
                block["is_error"] = draw(st.booleans())
            results.append(block)
        messages.append({"role": "user", "content": results})
    return messages


def _uses(messages: list[dict]) -> list[tuple]:
    return [(b["id"], b["name"], b["input"]) for m in messages if isinstance(m["content"], list)
            for b in m["content"] if b["type"] == "tool_use"]


def _tool_results(messages: list[dict]) -> list[tuple]:
    def text(c: object) -> str:
        return c if isinstance(c, str) else "".join(b["text"] for b in c)

    return [(b["tool_use_id"], text(b["content"]), b.get("is_error")) for m in messages
            if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_conversations())
def test_anthropic_to_openai_to_anthropic_keeps_every_call_argument_and_result(messages):
    body = {"model": "m", "max_tokens": 5, "messages": messages}
    openai = anthropic_request_to_openai(body)
    back = openai_request_to_anthropic(openai, "up", 100)["messages"]
    assert _uses(back) == _uses(messages)
    assert _tool_results(back) == _tool_results(messages)


@settings(max_examples=100)
@given(st.lists(st.tuples(ids, names, arguments), min_size=1, max_size=3, unique_by=lambda t: t[0]),
       st.integers(1, 7))
def test_streamed_tool_calls_survive_both_stream_translators(calls, cut):
    """Anthropic events → OpenAI chunks → Anthropic events: every tool_use and its input, whatever the cuts."""
    events = [{"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}}]
    for k, (cid, name, args) in enumerate(calls):
        events.append({"type": "content_block_start", "index": k,
                       "content_block": {"type": "tool_use", "id": cid, "name": name, "input": {}}})
        text = orjson.dumps(args).decode()
        for start in range(0, len(text), cut):
            events.append({"type": "content_block_delta", "index": k,
                           "delta": {"type": "input_json_delta", "partial_json": text[start:start + cut]}})
        events.append({"type": "content_block_stop", "index": k})
    events.append({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}})
    to_openai = AnthropicToOpenAIChunks("m")
    to_anthropic = OpenAIToAnthropicStream("m")
    sse = b"".join(to_anthropic.feed(c) for e in events for c in to_openai.feed(e)) + to_anthropic.finish()
    replayed = [orjson.loads(line[6:]) for line in sse.split(b"\n") if line.startswith(b"data: ")]
    blocks: dict[int, dict] = {}
    for e in replayed:
        if e["type"] == "content_block_start":
            blocks[e["index"]] = {**e["content_block"], "json": ""}
        elif e["type"] == "content_block_delta":
            blocks[e["index"]]["json"] += e["delta"]["partial_json"]
    got = [(b["id"], b["name"], orjson.loads(b["json"] or "{}")) for _, b in sorted(blocks.items())]
    assert got == [(c, n, a) for c, n, a in calls]
    assert replayed[0]["message"]["usage"]["input_tokens"] == 11  # the real count, at the start
    delta = next(e for e in replayed if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 9


def test_responses_round_trip_tool_calls_thinking_and_usage():
    resp = {"id": "msg_1", "type": "message", "stop_reason": "tool_use", "stop_sequence": None,
            "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "calling"},
                        {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"x": [1, {"y": None}]}},
                        {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}],
            "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 3,
                      "cache_creation_input_tokens": 2}}
    openai = anthropic_response_to_openai(resp, "m")
    msg = openai["choices"][0]["message"]
    assert openai["choices"][0]["finish_reason"] == "tool_calls" and msg["reasoning_content"] == "hmm"
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["f", "g"]
    assert openai["usage"]["prompt_tokens"] == 10 and openai["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    back = openai_response_to_anthropic(openai, "m")
    assert back["content"] == resp["content"] and back["stop_reason"] == "tool_use"
    assert back["usage"] == resp["usage"]


@pytest.mark.parametrize("anthropic_stop, openai_finish", [
    ("end_turn", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    ("stop_sequence", "stop")])
def test_stop_reasons_map_exactly(anthropic_stop, openai_finish):
    resp = {"content": [{"type": "text", "text": "a"}], "stop_reason": anthropic_stop,
            "stop_sequence": "END" if anthropic_stop == "stop_sequence" else None, "usage": {}}
    openai = anthropic_response_to_openai(resp, "m")
    assert openai["choices"][0]["finish_reason"] == openai_finish
    back = openai_response_to_anthropic(openai, "m")
    assert back["stop_reason"] == anthropic_stop and back["stop_sequence"] == resp["stop_sequence"]


def test_usage_with_cached_tokens_both_ways():
    u = {"input_tokens": 4, "output_tokens": 2, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 6}
    assert usage_to_openai(u) == {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22,
                                  "prompt_tokens_details": {"cached_tokens": 10, "cache_creation_tokens": 6}}
    assert usage_to_anthropic(usage_to_openai(u)) == u
    assert usage_to_anthropic({"prompt_tokens": 9, "completion_tokens": 1,
                               "prompt_tokens_details": {"cached_tokens": 4}}) == {
        "input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 0}


def test_images_system_cache_control_and_tool_choice_map_both_ways():
    body = {"model": "m", "max_tokens": 9,
            "system": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                {"type": "text", "text": "what?", "cache_control": {"type": "ephemeral"}}]}]}
    openai = anthropic_request_to_openai(body)
    parts = openai["messages"][1]["content"]
    assert parts[0]["image_url"]["url"] == "data:image/png;base64,AAAA"
    assert parts[1]["image_url"]["url"] == "https://x.test/a.png"
    assert openai["tool_choice"] == "required" and openai["parallel_tool_calls"] is False
    back = openai_request_to_anthropic(openai, "up", 100)
    assert back["system"] == body["system"] and back["messages"] == body["messages"]
    assert back["tools"] == body["tools"] and back["tool_choice"] == body["tool_choice"]
    plain = openai_only(openai)  # what an OpenAI-kind upstream gets: no Anthropic-only hints
    assert "cache_control" not in orjson.dumps(plain).decode()
    result = anthropic_request_to_openai({"model": "m", "max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r", "is_error": True,
                                      "cache_control": {"type": "ephemeral"}}]}]})
    assert openai_only(result)["messages"][1] == {"role": "tool", "tool_call_id": "t", "content": "r"}
    assert openai_only({"model": "m", "messages": []}) == {"model": "m", "messages": []}


@pytest.mark.parametrize("choice, anthropic", [("auto", {"type": "auto"}), ("none", {"type": "none"}),
                                               ("required", {"type": "any"}),
                                               ({"type": "function", "function": {"name": "f"}},
                                                {"type": "tool", "name": "f"})])
def test_tool_choice_both_ways(choice, anthropic):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    out = openai_request_to_anthropic({"messages": [{"role": "user", "content": "x"}], "tools": tools,
                                       "tool_choice": choice}, "up", 10)
    assert out["tool_choice"] == anthropic
    back = anthropic_request_to_openai({**out, "model": "m"})
    assert back["tool_choice"] == choice


def test_response_format_becomes_a_forced_tool_and_its_input_the_content():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = {"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "count", "schema": schema}}}
    out = openai_request_to_anthropic(body, "up", 10)
    assert out["tools"][0]["input_schema"] == schema and out["tool_choice"] == {"type": "tool", "name": "count"}
    resp = {"content": [{"type": "tool_use", "id": "t", "name": "count", "input": {"n": 3}}],
            "stop_reason": "tool_use", "usage": {}}
    openai = anthropic_response_to_openai(resp, "m", "count")
    assert openai["choices"][0]["message"] == {"role": "assistant", "content": '{"n":3}'}
    assert openai["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(GatewayError, match="response_format"):
        openai_request_to_anthropic({**body, "tools": [{"type": "function", "function": {"name": "f"}}]}, "up", 10)
    with pytest.raises(GatewayError, match="type is object"):
        openai_request_to_anthropic({**body, "response_format": {"type": "json_schema", "json_schema": {
            "name": "a", "schema": {"type": "array"}}}}, "up", 10)


def test_what_cannot_be_carried_is_a_400_naming_it():
    with pytest.raises(GatewayError) as info:
        anthropic_request_to_openai({"model": "m", "max_tokens": 5, "tools": [{"type": "web_search_20250305",
                                                                             "name": "web_search"}],
                                     "messages": [{"role": "user", "content": "x"}]})
    assert info.value.status == 400 and info.value.param == "tools.0"
    with pytest.raises(GatewayError) as info:
        anthropic_request_to_openai({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "document", "source": {}}]}]})
    assert info.value.param == "messages.0.content.0"
    with pytest.raises(GatewayError) as info:
        openai_request_to_anthropic({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}, "up", 5)
    assert info.value.param == "messages.0.tool_calls.0.function.arguments"


def test_streamed_thinking_keeps_its_text_signature_and_redacted_blocks():
    events = [{"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "S"}},
              {"type": "content_block_stop", "index": 0},
              {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking",
                                                                            "data": "opaque"}},
              {"type": "content_block_stop", "index": 1},
              {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "hi"}},
              {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}]
    to_openai = AnthropicToOpenAIChunks("m")
    to_anthropic = OpenAIToAnthropicStream("m")
    sse = b"".join(to_anthropic.feed(c) for e in events for c in to_openai.feed(e)) + to_anthropic.finish()
    replayed = [orjson.loads(line[6:]) for line in sse.split(b"\n") if line.startswith(b"data: ")]
    starts = [e["content_block"]["type"] for e in replayed if e["type"] == "content_block_start"]
    assert starts == ["thinking", "redacted_thinking", "text"]
    deltas = [e["delta"] for e in replayed if e["type"] == "content_block_delta"]
    assert deltas == [{"type": "thinking_delta", "thinking": "hm"}, {"type": "signature_delta", "signature": "S"},
                      {"type": "text_delta", "text": "hi"}]


block_types = st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document", None])
loose_blocks = st.fixed_dictionaries({"type": block_types}, optional={
    "text": json_values, "source": json_values, "id": json_values, "name": json_values, "input": json_values,
    "tool_use_id": json_values, "content": json_values, "is_error": json_values})
loose_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "system"])},
                                                optional={"content": st.text() | st.lists(loose_blocks, max_size=3)
                                                          | json_values,
                                                          "tool_calls": json_values | st.lists(st.fixed_dictionaries(
                                                              {"id": json_values, "function": json_values})),
                                                          "tool_call_id": json_values})
                          | json_values, min_size=1, max_size=4)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(loose_messages, json_values, json_values, json_values, json_values)
def test_malformed_bodies_are_400s_never_crashes(messages, tools, tool_choice, response_format, other):
    """Whatever a client sends, translation either works or raises a GatewayError (a 4xx envelope)."""
    anthropic_body = {"model": "m", "max_tokens": 5, "messages": messages, "tools": tools, "tool_choice": tool_choice,
                      "system": other, "metadata": other}
    openai_body = {"messages": messages, "tools": tools, "tool_choice": tool_choice,
                   "response_format": response_format, "stop": other}
    needs(openai_body)
    prompt_tokens(openai_body)
    for call in (lambda: anthropic_request_to_openai(anthropic_body),
                 lambda: openai_request_to_anthropic(openai_body, "up", 10)):
        try:
            call()
        except GatewayError as exc:
            assert 400 <= exc.status < 500


def test_interleaved_parallel_call_fragments_keep_their_arguments():
    """Some OpenAI-kind servers interleave parallel calls' fragments; each lands on its own tool_use block."""
    def chunk(calls: list[dict]) -> dict:
        return {"choices": [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}]}

    stream = OpenAIToAnthropicStream("m")
    sse = b"".join(stream.feed(c) for c in [
        chunk([{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x": '}}]),
        chunk([{"index": 1, "id": "b", "function": {"name": "g", "arguments": '{"y": '}}]),
        chunk([{"index": 0, "function": {"arguments": "1}"}}]),
        chunk([{"index": 1, "function": {"arguments": "2}"}}]),
    ]) + stream.finish()
    events = [orjson.loads(line[6:]) for line in sse.split(b"\n") if line.startswith(b"data: ")]
    json_by_block: dict[int, str] = {}
    for e in events:
        if e["type"] == "content_block_delta":
            json_by_block[e["index"]] = json_by_block.get(e["index"], "") + e["delta"]["partial_json"]
    assert {k: orjson.loads(v) for k, v in json_by_block.items()} == {0: {"x": 1}, 1: {"y": 2}}
