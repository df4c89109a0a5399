"""The partner simulator's tool calls and JSON answers: deterministic, valid for the request's schemas, in both
wire formats, and every request body recorded."""

from __future__ import annotations

import orjson
from starlette.testclient import TestClient

from autarky.demo.partner_tools import anthropic_calls, example, json_text, openai_calls
from autarky.demo.partners import Faults, make_app

SCHEMA = {"type": "object", "properties": {
    "kind": {"type": "string", "enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 4},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}, "ok": {"type": "boolean"},
    "maybe": {"type": ["null", "number"]}, "pick": {"anyOf": [{"const": 7}, {"type": "string"}]},
    "inner": {"type": "object", "properties": {"s": {"type": "string", "minLength": 3}}}}}


def test_example_follows_the_schema():
    assert example(SCHEMA) == {"kind": "a", "n": 4, "tags": ["x", "x"], "ok": True, "maybe": 1.5, "pick": 7,
                               "inner": {"s": "xxx"}}


def test_call_rules_in_both_formats():
    tools = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}},
             {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}]
    user = [{"role": "user", "content": "x"}]
    assert [c["function"]["name"] for c in openai_calls({"tools": tools, "messages": user})] == ["f", "g"]
    assert [c["function"]["name"] for c in openai_calls({"tools": tools, "messages": user,
                                                          "parallel_tool_calls": False})] == ["f"]
    assert openai_calls({"tools": tools, "messages": user, "tool_choice": "none"}) == []
    after = [*user, {"role": "tool", "tool_call_id": "c", "content": "r"}]
    assert openai_calls({"tools": tools, "messages": after}) == []
    assert len(openai_calls({"tools": tools, "messages": after, "tool_choice": "required"})) == 2
    named = {"type": "function", "function": {"name": "g"}}
    assert [c["function"]["name"] for c in openai_calls({"tools": tools, "messages": user, "tool_choice": named})] \
        == ["g"]
    a_tools = [{"name": "f", "input_schema": SCHEMA}, {"name": "g", "input_schema": {"type": "object"}}]
    uses = anthropic_calls({"tools": a_tools, "messages": user, "tool_choice": {"type": "tool", "name": "f"}})
    assert [(u["name"], u["input"]) for u in uses] == [("f", example(SCHEMA))]
    assert anthropic_calls({"tools": a_tools, "messages": user, "tool_choice": {"type": "none"}}) == []
    assert orjson.loads(json_text({"response_format": {"type": "json_schema",
                                                       "json_schema": {"schema": SCHEMA}}})) == example(SCHEMA)


def test_simulator_streams_tool_calls_and_records_bodies():
    faults = Faults()
    client = TestClient(make_app(faults))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]}
    text = client.post("/v1/chat/completions", json=body).text
    chunks = [orjson.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
    args = "".join(tc["function"].get("arguments", "") for c in chunks for ch in c["choices"]
                   for tc in ch["delta"].get("tool_calls") or ())
    assert orjson.loads(args) == example(SCHEMA)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert list(faults.bodies) == [("/v1/chat/completions", body)]
    counted = client.post("/v1/messages/count_tokens", json={"model": "m", "messages": [
        {"role": "user", "content": "a b c"}]}).json()
    assert counted == {"input_tokens": 3}
