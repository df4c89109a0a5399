"""Function calling through the real server and the official SDK: forced calls are valid calls, streamed deltas
reassemble to the non-streamed call, tool history reaches the prompt, and model output parses into tool_calls."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autarky.model.tokenizer import ChatTemplate
from autarky.serve.text import TextCodec
from autarky.serve.tools import ToolCallStream, ToolUse, parse_output, template_messages

pytestmark = pytest.mark.timeout(300)

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 10},
    "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city", "unit"],
    "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(served_tiny_long) -> openai.OpenAI:
    return openai.OpenAI(base_url=served_tiny_long.base_url, api_key="unused", max_retries=0)


def _valid(call) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", range(4))
def test_required_gives_valid_calls(client, served_tiny_long, seed):
    r = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, tools=TOOLS, n=2,
                                       tool_choice="required", max_tokens=400, seed=seed, temperature=1.0)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert 1 <= len(choice.message.tool_calls) <= 8
        for call in choice.message.tool_calls:
            _valid(call)


def test_named_function_is_called_once(client, served_tiny_long):
    r = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, tools=TOOLS, seed=5,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}},
                                       max_tokens=200)
    (choice,) = r.choices
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and choice.finish_reason == "tool_calls"
    _valid(call)


def test_no_parallel_calls_means_one_call(client, served_tiny_long):
    for seed in range(3):
        r = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, tools=TOOLS, seed=seed,
                                           tool_choice="required", parallel_tool_calls=False, max_tokens=200)
        assert len(r.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize("seed", [1, 2])
def test_streamed_deltas_reassemble_to_the_call(client, served_tiny_long, seed):
    args = {"model": served_tiny_long.model, "messages": MESSAGES, "tools": TOOLS, "tool_choice": "required",
            "max_tokens": 400, "seed": seed, "n": 2}
    whole = client.chat.completions.create(**args)
    calls: dict[int, dict[int, dict]] = {0: {}, 1: {}}
    finish = {}
    for chunk in client.chat.completions.create(**args, stream=True):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                call = calls[c.index].setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or d.id
                call["name"] += (d.function.name or "") if d.function else ""
                call["arguments"] += (d.function.arguments or "") if d.function else ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert finish == {0: "tool_calls", 1: "tool_calls"}
    for choice in whole.choices:
        streamed = [calls[choice.index][i] for i in sorted(calls[choice.index])]
        assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == \
            [(t.function.name, json.loads(t.function.arguments)) for t in choice.message.tool_calls]
        assert all(c["id"].startswith("call_") for c in streamed)


def test_tool_choice_none_and_auto(client, served_tiny_long):
    plain = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, max_tokens=8,
                                           temperature=0)
    none = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, max_tokens=8,
                                          temperature=0, tools=TOOLS, tool_choice="none")
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens  # `none`: the tools are not offered
    assert none.choices[0].message.content == plain.choices[0].message.content
    auto = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, max_tokens=8,
                                          temperature=0, tools=TOOLS)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens  # the tool list is in the prompt
    assert auto.choices[0].message.tool_calls is None and auto.choices[0].finish_reason == "length"


def test_tool_results_in_history_reach_the_prompt(client, served_tiny_long):
    history = [*MESSAGES,
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function":
                {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}]
    short = client.chat.completions.create(model=served_tiny_long.model, messages=MESSAGES, tools=TOOLS,
                                           max_tokens=1)
    long = client.chat.completions.create(model=served_tiny_long.model, messages=history, tools=TOOLS, max_tokens=1)
    codec = TextCodec.from_folder(served_tiny_long.model_dir)
    extra = "Paris celsius 18 degrees and sunny <tool_call> </tool_call> <tool_response> </tool_response>"
    assert long.usage.prompt_tokens - short.usage.prompt_tokens >= len(codec.encode(extra)) // 2


def test_fallback_format_renders_calls_and_results(tiny_hf_model_dir):
    codec = TextCodec.from_folder(tiny_hf_model_dir)
    tools = ToolUse.from_request(TOOLS, "auto", None)
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES,
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function":
                 {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "18C"}]
    rendered, native_tools = template_messages(messages, tools, native=False)
    prompt = codec.chat_prompt(rendered, tools=native_tools)
    assert native_tools is None and prompt.count("<|im_start|>system") == 1
    assert "Be brief." in prompt and '"name": "get_weather"' in prompt and "<tools>" in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>' \
        in prompt
    assert "<tool_response>\n18C\n</tool_response>" in prompt


def test_native_template_gets_tools_and_history():
    source = ("{% for t in tools %}TOOL {{ t.function.name }}\n{% endfor %}{% for m in messages %}{{ m.role }}: "
              "{{ m.content }}{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} "
              "{{ c.function.arguments | tojson }}{% endfor %}{% if m.tool_call_id %} ({{ m.tool_call_id }})"
              "{% endif %}\n{% endfor %}")
    template = ChatTemplate(source)
    assert template.supports_tools
    tools = ToolUse.from_request(TOOLS, "auto", None)
    messages = [*MESSAGES, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "noon"}]
    rendered, native_tools = template_messages(messages, tools, native=True)
    text = template.render(rendered, tools=native_tools)
    assert "TOOL get_weather\nTOOL get_time\n" in text
    assert 'CALL get_time {"zone": "UTC"}' in text and "tool: noon (c1)" in text


TOOL_USE = ToolUse.from_request(TOOLS, "auto", None)
OUTPUT = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n'
          '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>'
          '<tool_call>{"name": "unknown", "arguments": {}}</tool_call> <tool_call>{"name": "get_t')


def test_parse_output_takes_declared_calls_only():
    content, calls = parse_output(OUTPUT, TOOL_USE)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo", "unit": "celsius"}
    assert content.startswith("Let me check.") and "unknown" in content and content.endswith('"get_t')
    assert parse_output("plain text", TOOL_USE) == ("plain text", [])


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(OUTPUT)), max_size=30))
def test_stream_parser_matches_whole_parse_however_the_text_is_split(cuts):
    stream, deltas, bounds = ToolCallStream(TOOL_USE), [], [0, *sorted(cuts), len(OUTPUT)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        deltas += stream.feed(OUTPUT[a:b])
    deltas += stream.finish()
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for c in d.get("tool_calls", []):
            entry = calls.setdefault(c["index"], {"name": "", "arguments": ""})
            entry["name"] += c["function"].get("name", "")
            entry["arguments"] += c["function"].get("arguments", "")
    whole_content, whole_calls = parse_output(OUTPUT, TOOL_USE)
    assert [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)] == \
        [(c["function"]["name"], c["function"]["arguments"]) for c in whole_calls]
    # The same content, up to whitespace (the stream cannot take back a space it sent before a call).
    assert "".join(content.split()) == "".join(whole_content.split())


CUT = OUTPUT[: OUTPUT.index("<tool_call>{\"name\": \"unknown")]  # two calls, then a third block cut short
CUT += '<tool_call>\n{"name": "get_time", "arguments": {"zo'


def test_a_block_cut_by_the_token_limit_is_dropped_and_the_complete_calls_kept():
    content, calls = parse_output(CUT, TOOL_USE, truncated=True)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert content == "Let me check."
    assert parse_output('Hm. <tool_call>{"name": "get_t', TOOL_USE, truncated=True) == ("Hm. ", [])
    # A complete block that does not parse stays text; only the one the limit cut is dropped.
    assert parse_output(OUTPUT, TOOL_USE, truncated=True)[0].endswith('"unknown", "arguments": {}}</tool_call>')
    # Not cut by the limit (the model stopped): the unclosed block stays text, as before.
    assert parse_output(CUT, TOOL_USE)[0].endswith('"arguments": {"zo')


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, len(CUT)), max_size=30))
def test_stream_parser_drops_a_cut_block_too(cuts):
    stream, deltas, bounds = ToolCallStream(TOOL_USE), [], [0, *sorted(cuts), len(CUT)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        deltas += stream.feed(CUT[a:b])
    deltas += stream.finish(truncated=True)
    assert "".join(d.get("content", "") for d in deltas).strip() == "Let me check."
    assert [c["function"]["name"] for d in deltas for c in d.get("tool_calls", []) if "name" in c["function"]] == \
        ["get_weather", "get_time"]


def test_parallel_calls_cut_by_max_tokens(client, served_tiny_long):
    """max_tokens ends inside the second of parallel forced calls: the first comes back as a call, the cut block
    not as content, and finish_reason stays "length"; streamed alike."""
    base = {"model": served_tiny_long.model, "messages": MESSAGES, "tools": TOOLS, "tool_choice": "required",
            "temperature": 1.0}
    for seed in range(20):
        full = client.chat.completions.create(**base, seed=seed, max_tokens=400, logprobs=True)
        if len(full.choices[0].message.tool_calls) >= 2:
            break
    else:
        pytest.fail("no seed gave parallel calls")
    tokens = [t.token for t in full.choices[0].logprobs.content]
    limit = next(n for n in range(len(tokens)) if "".join(tokens[:n]).count("<tool_call>") == 2)  # 2nd block open
    first = full.choices[0].message.tool_calls[0]
    cut = client.chat.completions.create(**base, seed=seed, max_tokens=limit + 2)
    (choice,) = cut.choices
    assert choice.finish_reason == "length" and choice.message.content is None
    assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == \
        [(first.function.name, first.function.arguments)]
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(**base, seed=seed, max_tokens=limit + 2, stream=True):
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                calls[d.index] = calls.get(d.index, "") + ((d.function.arguments or "") if d.function else "")
            finish = c.finish_reason or finish
    assert finish == "length" and not content.strip()
    assert list(calls.values()) == [first.function.arguments]


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_bad_tool_requests_are_400(served_tiny_long, extra, param):
    r = httpx.post(f"{served_tiny_long.base_url}/chat/completions", timeout=60,
                   json={"model": served_tiny_long.model, "messages": MESSAGES, "max_tokens": 5, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
