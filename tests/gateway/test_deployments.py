"""Every deployment of a model counts for its consumers: the ledger charges the deployment that answered (each
may have its own prices and context window), the in-house share follows the provider that served, a cost
ceiling keeps only the deployments under it, and /v1/models names every provider."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from autarky.errors import UserError
from autarky.gateway.config import parse_config
from autarky.gateway.usage import in_house_providers, usage_report
from autarky.store.gateway_tables import gateway_usage

from .conftest import wait_for_ledger

MESSAGES = [{"role": "user", "content": "one two three"}]
# "gpt" on the partner at list price, and on our own hardware at no cost.
DEPLOYED = {"models": {"gpt": {"provider": "partner", "upstream_id": "gpt-up", "usd_per_1m_input": 1000.0,
                               "usd_per_1m_output": 2000.0,
                               "deployments": [{"provider": "local", "upstream_id": "small-up",
                                                "usd_per_1m_input": 0.0, "usd_per_1m_output": 0.0}]}},
            "teams": {"frugal": {"max_usd_per_1k_tokens": 0.01}}}


def chat(url: str, **headers: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=headers, timeout=10,
                      json={"model": "gpt", "messages": MESSAGES, "max_tokens": 8})


def test_the_ledger_charges_and_the_usage_report_credits_the_deployment_that_answered(make_gateway, faults):
    gw, url = make_gateway(**DEPLOYED)
    served = [chat(url).headers["x-autarky-provider"] for _ in range(4)]
    assert sorted(served) == ["local", "local", "partner", "partner"]
    wait_for_ledger(gw, 4)
    with gw.engine.connect() as conn:
        rows = conn.execute(select(gateway_usage)).all()
    for r in rows:
        price = (1000.0, 2000.0) if r.provider == "partner" else (0.0, 0.0)
        assert r.cost_usd == pytest.approx((r.prompt_tokens * price[0] + r.completion_tokens * price[1]) / 1e6)
        assert (r.cost_usd > 0) == (r.provider == "partner")
    report = usage_report(gw.engine, ["model"], in_house=in_house_providers(gw.config))
    [row] = report.rows
    in_house_tokens = sum(r.prompt_tokens + r.completion_tokens for r in rows if r.provider == "local")
    assert row.in_house_tokens == in_house_tokens and 0 < row.in_house_share < 1


def test_a_cost_ceiling_keeps_the_cheap_deployment_and_models_lists_every_provider(make_gateway, faults):
    _, url = make_gateway(**DEPLOYED)
    from autarky.gateway.router import Router
    from autarky.gateway.routes import RoutesWatcher

    gw_config = parse_config({**DEPLOYED, "providers": {"partner": {"base_url": "http://127.0.0.1:9/v1"},
                                                        "local": {"base_url": "http://127.0.0.1:9/v1",
                                                                  "in_house": True}}})
    decision = Router(gw_config, RoutesWatcher(None)).decide("gpt", team="frugal")
    assert [t.provider for t in decision.targets] == ["local"] and "partner" in decision.reason
    [model] = [m for m in httpx.get(url + "/v1/models").json()["data"] if m["id"] == "gpt"]
    assert model["owned_by"] == "partner,local"


def test_a_deployment_has_its_own_context_window():
    cfg = parse_config({"providers": {"a": {"base_url": "http://x"}, "b": {"base_url": "http://y"}},
                        "models": {"m": {"provider": "a", "context_window": 100,
                                         "deployments": [{"provider": "b", "context_window": 4000}]}}})
    assert [p.context_window for p in cfg.models["m"].placements()] == [100, 4000]
    with pytest.raises(UserError, match="deployments.0.usd_per_1m_input"):
        parse_config({"providers": {"a": {"base_url": "http://x"}, "b": {"base_url": "http://y"}},
                      "models": {"m": {"provider": "a", "deployments": [{"provider": "b", "usd_per_1m_input": -1}]}}})
