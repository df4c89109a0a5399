"""Property tests: no request is ever routed outside the key's regions, data class, models or cost ceiling,
nor off in-house when self_sufficient is on; and an empty allowed set is a 403, never a fallback."""

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autarky.gateway.config import DATA_CLASSES, parse_config
from autarky.gateway.errors import GatewayError
from autarky.gateway.router import Router
from autarky.gateway.routes import RoutesWatcher

REGIONS = ["local", "eu", "us", "apac"]
MODEL_NAMES = [f"m{i}" for i in range(6)]

providers_st = st.dictionaries(
    st.sampled_from(["p0", "p1", "p2", "p3"]),
    st.fixed_dictionaries({
        "base_url": st.just("http://127.0.0.1:9/v1"),
        "region": st.sampled_from(REGIONS),
        "in_house": st.booleans(),
        "retains_data": st.booleans(),
        "max_data_class": st.none() | st.sampled_from(DATA_CLASSES),
    }),
    min_size=1,
)


@st.composite
def configs(draw):
    providers = draw(providers_st)
    names = draw(st.lists(st.sampled_from(MODEL_NAMES), min_size=1, unique=True))
    models = {n: {"provider": draw(st.sampled_from(sorted(providers))),
                  "usd_per_1m_input": draw(st.sampled_from([0.0, 0.5, 3.0, 15.0])),
                  "usd_per_1m_output": draw(st.sampled_from([0.0, 1.0, 15.0, 60.0]))} for n in names}
    tasks = {"t": {"candidates": draw(st.lists(st.sampled_from(names), min_size=1, unique=True)),
                   "data_class": draw(st.sampled_from(DATA_CLASSES))}}
    team = {
        "models": draw(st.none() | st.lists(st.sampled_from(MODEL_NAMES), unique=True)),
        "regions": draw(st.none() | st.lists(st.sampled_from(REGIONS), unique=True)),
        "data_class": draw(st.sampled_from(DATA_CLASSES)),
        "self_sufficient": draw(st.none() | st.booleans()),
        "max_usd_per_1k_tokens": draw(st.none() | st.sampled_from([0.0, 0.001, 0.01])),
    }
    policy = {"self_sufficient": draw(st.booleans()),
              "allowed_regions": draw(st.none() | st.lists(st.sampled_from(REGIONS), unique=True))}
    return {"store": "sqlite://", "providers": providers, "models": models, "tasks": tasks,
            "teams": {"team": team}, "policy": policy}


def allowed_by_hand(cfg: dict, model: str, key_models, header_class: str | None) -> bool:
    """The policy, restated independently of the router."""
    m = cfg["models"][model]
    p = cfg["providers"][m["provider"]]
    team, policy = cfg["teams"]["team"], cfg["policy"]
    classes = [team["data_class"], cfg["tasks"]["t"]["data_class"], header_class or "public"]
    need = max(DATA_CLASSES.index(c) for c in classes)
    default = "restricted" if p["in_house"] else "public"  # in house: our own hardware; partners: opt in
    ceiling = 0 if p["retains_data"] else DATA_CLASSES.index(p["max_data_class"] or default)
    price = (m["usd_per_1m_input"] + m["usd_per_1m_output"]) / 2 / 1000
    return (
        (team["models"] is None or model in team["models"])
        and (key_models is None or model in key_models)
        and (not (policy["self_sufficient"] or team["self_sufficient"]) or p["in_house"])
        and (policy["allowed_regions"] is None or p["region"] in policy["allowed_regions"])
        and (team["regions"] is None or p["region"] in team["regions"])
        and need <= ceiling
        and (team["max_usd_per_1k_tokens"] is None or price <= team["max_usd_per_1k_tokens"])
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), key_models=st.none() | st.lists(st.sampled_from(MODEL_NAMES), unique=True).map(tuple),
       header_class=st.none() | st.sampled_from(DATA_CLASSES))
def test_router_never_plans_outside_policy(cfg, key_models, header_class):
    router = Router(parse_config(cfg), RoutesWatcher(None))
    expected = [m for m in cfg["tasks"]["t"]["candidates"] if allowed_by_hand(cfg, m, key_models, header_class)]
    try:
        plan = router.decide("task:t", team="team", key_models=key_models, data_class=header_class)
    except GatewayError as exc:
        assert exc.status == 403 and exc.code == "no_allowed_route"
        assert expected == []
        return
    assert sorted(t.model for t in plan.targets) == sorted(expected)
    assert plan.targets, "a plan is never empty"


@pytest.fixture
def policy_gateway(make_gateway):
    return make_gateway(require_keys=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(team=st.sampled_from(["secure", "eu", "default", "recorder"]),
       data_class=st.sampled_from(DATA_CLASSES),
       target=st.sampled_from(["task:spreadsheet", "task:inhouse", "gpt", "claude", "small"]),
       failing=st.sets(st.sampled_from(["gpt-up", "small-up", "claude-up", "small2-up"])))
def test_live_gateway_only_calls_allowed_providers(policy_gateway, faults, team, data_class, target, failing):
    """Even while allowed providers fail (so the gateway fails over), nothing goes outside the policy."""
    gw, url = policy_gateway
    from autarky.gateway.auth import create_key

    key, record = create_key(gw.engine, team)
    faults.reset()
    for m in failing:
        faults.default[m] = "503"
    for b in gw.breakers.values():
        b.success()
    allowed_upstreams = set()
    try:
        plan = gw.router.decide(target, team=team, data_class=data_class)
        allowed_upstreams = {t.model_entry.upstream_id for t in plan.targets}
    except GatewayError:
        pass
    r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}",
                                                          "x-autarky-data-class": data_class},
                   json={"model": target, "messages": [{"role": "user", "content": "x"}]}, timeout=20)
    called = {m for _, m in faults.calls}
    assert called <= allowed_upstreams
    if not allowed_upstreams:
        assert r.status_code in (403,) and r.json()["error"]["code"] == "no_allowed_route"
    elif allowed_upstreams <= failing:
        assert r.status_code == 502
    else:
        assert r.status_code == 200
        assert r.headers["x-autarky-model"] in {t.model for t in plan.targets}


def test_self_sufficient_switch_keeps_traffic_in_house(make_gateway, faults):
    _, url = make_gateway(policy={"self_sufficient": True})
    r = httpx.post(url + "/v1/chat/completions",
                   json={"model": "task:spreadsheet", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and r.headers["x-autarky-model"] == "small"
    assert "self_sufficient" in r.headers["x-autarky-route-reason"]
    assert "gpt(self_sufficient)" in r.headers["x-autarky-route-reason"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "claude", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 403 and "self_sufficient" in r.json()["error"]["message"]
    assert {m for _, m in faults.calls} == {"small-up"}
