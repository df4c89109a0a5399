"""Capability-aware routing: a request needing tools, JSON, images or thinking goes to a candidate that declares
it, and with none able is a 400 naming the field; a candidate whose context window cannot hold the prompt is skipped."""

from __future__ import annotations

import anthropic
import openai
import pytest

from autarky.gateway.capabilities import needs, supports
from autarky.gateway.config import parse_config
from autarky.gateway.errors import GatewayError
from autarky.gateway.router import Router
from autarky.gateway.routes import RoutesWatcher

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
USER = [{"role": "user", "content": "x"}]


def _router(**models) -> Router:
    cfg = parse_config({
        "providers": {"home": {"base_url": "http://127.0.0.1:9/v1", "in_house": True},
                      "oai": {"base_url": "http://127.0.0.1:9/v1", "max_data_class": "restricted"},
                      "ant": {"kind": "anthropic", "base_url": "http://127.0.0.1:9",
                              "max_data_class": "restricted"}},
        "models": {"home": {"provider": "home", **models.get("home", {})},
                   "oai": {"provider": "oai", **models.get("oai", {})},
                   "ant": {"provider": "ant", **models.get("ant", {})}},
        "tasks": {"t": {"candidates": ["home", "oai", "ant"]}},
        "teams": {"secure": {"self_sufficient": True}},
    })
    return Router(cfg, RoutesWatcher(None))


def _models(router: Router, body: dict, team: str | None = None, tokens: int = 0) -> list[str]:
    return [t.model for t in router.decide("task:t", team=team, needs=needs(body), prompt_tokens=tokens).targets]


def test_defaults_keep_todays_configs_working():
    cfg = _router().config
    assert supports(cfg.models["home"], cfg.providers["home"]) == {"tools", "json_schema", "openai_params"}
    assert supports(cfg.models["oai"], cfg.providers["oai"]) == {"tools", "json_schema", "images", "openai_params"}
    assert supports(cfg.models["ant"], cfg.providers["ant"]) == {"tools", "json_schema", "images", "thinking",
                                                                 "anthropic_params"}
    assert _models(_router(), {"messages": USER}) == ["home", "oai", "ant"]  # plain chat: nothing filtered


@pytest.mark.parametrize("body, field, capable", [
    ({"tools": TOOLS}, "tools", ["oai", "ant"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}, "response_format", ["oai", "ant"]),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking", ["ant"]),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                {"type": "image_url", "image_url": {"url": "data:x"}}]}]},
     "messages.0.content.1", ["oai", "ant"]),
    ({"messages": [*USER, {"role": "tool", "tool_call_id": "c", "content": "r"}]}, "messages.1", ["oai", "ant"]),
])
def test_routing_picks_capable_candidates_and_400s_when_none(body, field, capable):
    body = {"messages": USER, **body}
    plain_home = {"home": {"supports": []}}  # an in-house server that answers plain chat only
    assert _models(_router(**plain_home), body) == capable
    with pytest.raises(GatewayError) as info:
        _models(_router(**plain_home), body, team="secure")  # in-house only, and home declares nothing
    assert info.value.status == 400 and info.value.param == field and field in info.value.message
    declared = _router(home={"supports": ["tools", "json_schema", "images", "thinking"]})
    assert _models(declared, body, team="secure") == ["home"]


def test_context_window_skips_candidates_that_cannot_hold_the_prompt():
    router = _router(home={"context_window": 100}, oai={"context_window": 1000})
    assert _models(router, {"messages": USER}, tokens=500) == ["oai", "ant"]
    assert _models(router, {"messages": USER}, tokens=5000) == ["ant"]
    assert _models(router, {"messages": USER}, tokens=50) == ["home", "oai", "ant"]


def test_openai_only_fields_go_to_openai_kind_upstreams_or_400():
    assert _models(_router(), {"messages": USER, "logit_bias": {"1": 5}}) == ["home", "oai"]
    assert _models(_router(), {"messages": USER, "n": 2}) == ["home", "oai"]
    cfg = parse_config({"providers": {"ant": {"kind": "anthropic", "base_url": "http://127.0.0.1:9",
                                              "max_data_class": "restricted"}},
                        "models": {"ant": {"provider": "ant"}}})
    with pytest.raises(GatewayError) as info:
        Router(cfg, RoutesWatcher(None)).decide("ant", needs=needs({"messages": USER, "presence_penalty": 0.5}))
    assert info.value.status == 400 and info.value.param == "presence_penalty"


def test_the_gateway_routes_tools_past_an_incapable_in_house_model(make_gateway, faults):
    _, url = make_gateway(tasks={"mixed": {"candidates": ["small", "gpt"]}},
                          models={"small": {"supports": []}})  # a server that answers plain chat only
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="task:mixed", messages=USER, tools=TOOLS)
    assert raw.parse().model == "gpt" and "small(no tools)" in raw.headers["x-autarky-route-reason"]
    assert client.chat.completions.create(model="task:mixed", messages=USER).model == "small"
    with pytest.raises(openai.BadRequestError, match="tools: needs 'tools'"):
        client.chat.completions.create(model="small", messages=USER, tools=TOOLS)
    assert faults.calls == [("/v1/chat/completions", "gpt-up"), ("/v1/chat/completions", "small-up")]


def test_thinking_reaches_an_anthropic_upstream(make_gateway, faults):
    _, url = make_gateway()
    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        client.messages.create(model="gpt", max_tokens=5, messages=USER,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    client.messages.create(model="claude", max_tokens=5, messages=USER,
                           thinking={"type": "enabled", "budget_tokens": 1024})
    assert faults.bodies[-1][1]["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_fields_of_one_format_only_stay_with_that_kind(make_gateway, faults):
    """An Anthropic field the OpenAI form has no place for reaches Anthropic upstreams verbatim; an OpenAI field
    the Messages API lacks reaches OpenAI-kind ones; across kinds, a 400 naming it."""
    _, url = make_gateway()
    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    client.messages.create(model="claude", max_tokens=5, messages=USER, extra_body={"service_tier": "auto"})
    assert faults.bodies[-1][1]["service_tier"] == "auto"
    with pytest.raises(anthropic.BadRequestError, match="service_tier"):
        client.messages.create(model="gpt", max_tokens=5, messages=USER, extra_body={"service_tier": "auto"})
    oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    oai.chat.completions.create(model="gpt", messages=USER, seed=3, logprobs=True)
    assert faults.bodies[-1][1]["seed"] == 3
    with pytest.raises(openai.BadRequestError, match="seed"):
        oai.chat.completions.create(model="claude", messages=USER, seed=3)
    client.messages.create(model="small", max_tokens=5, messages=USER, extra_body={"top_k": 5})
    assert faults.bodies[-1][1]["top_k"] == 5  # in house (vLLM, autarky serve) takes top_k
    client.messages.create(model="gpt", max_tokens=5, messages=USER, extra_body={"top_k": 5})
    assert "top_k" not in faults.bodies[-1][1]


def test_in_house_servers_carry_tools_and_json_by_default():
    """`autarky serve` (and vLLM) answer tools and json_schema, so a self-sufficient team keeps them."""
    for body in ({"tools": TOOLS}, {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}):
        assert _models(_router(), {"messages": USER, **body}, team="secure") == ["home"]
