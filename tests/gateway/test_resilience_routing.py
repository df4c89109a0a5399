"""Routing resilience: streams dying after the first chunk open the breaker, several deployments per model,
context windows enforced (and an upstream's context overflow fails over), routing around an open breaker is
said, and a keyed audit chain is never extended without its key."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from sqlalchemy import select

from autarky.errors import UserError
from autarky.gateway import audit
from autarky.gateway.auth import create_key
from autarky.gateway.breaker import OPEN, Breaker
from autarky.gateway.config import RetryConfig, parse_config
from autarky.gateway.dispatch import Dispatcher, Outcome
from autarky.gateway.errors import GatewayError
from autarky.gateway.metrics import Metrics
from autarky.gateway.providers import UpstreamError
from autarky.gateway.router import Router
from autarky.gateway.routes import RoutesWatcher
from autarky.store.database import open_store
from autarky.store.gateway_tables import gateway_usage

from .conftest import wait_for_ledger

MESSAGES = [{"role": "user", "content": "hello"}]


def stream_once(url: str, model: str) -> httpx.Response:
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=20,
                      json={"model": model, "messages": MESSAGES, "stream": True}) as r:
        r.read()
    return r


def test_streams_dying_after_the_first_chunk_open_the_breaker(make_gateway, faults):
    gw, url = make_gateway(retry={"max_retries": 0})
    faults.default["gpt-up"] = "die:2"
    for _ in range(3):  # the threshold in conftest
        assert b"mid-stream" in stream_once(url, "task:spreadsheet").content
    assert gw.breakers["partner"].state == OPEN
    faults.calls.clear()
    r = stream_once(url, "task:spreadsheet")
    assert r.headers["x-autarky-model"] == "small" and b"mid-stream" not in r.content
    assert [m for _, m in faults.calls] == ["small-up"]
    # Said three ways: the route reason, the failover count, and the ledger row.
    assert "skipped partner (circuit open)" in r.headers["x-autarky-route-reason"]
    assert r.headers["x-autarky-failovers"] == "1"
    wait_for_ledger(gw, 4)
    with gw.engine.connect() as conn:
        rows = conn.execute(select(gateway_usage.c.provider, gateway_usage.c.failovers)
                            .order_by(gateway_usage.c.id)).all()
    assert rows[-1] == ("local", 1)


def test_a_single_provider_model_whose_streams_die_gets_an_open_breaker(make_gateway, faults):
    gw, url = make_gateway(retry={"max_retries": 0})
    faults.default["small-up"] = "die:2"
    for _ in range(3):
        stream_once(url, "small")
    assert gw.breakers["local"].state == OPEN


def deployed(**extra) -> dict:
    return {"models": {"small": {"provider": "local", "upstream_id": "small-up",
                                 "deployments": [{"provider": "local2", "upstream_id": "small2-up"}], **extra}}}


def test_a_model_with_several_deployments_is_balanced_and_fails_over(make_gateway, faults):
    gw, url = make_gateway(retry={"max_retries": 0}, **deployed())
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    providers = [c.chat.completions.with_raw_response.create(model="small", messages=MESSAGES)
                 .headers["x-autarky-provider"] for _ in range(4)]
    assert sorted(providers) == ["local", "local", "local2", "local2"]
    assert sorted(m for _, m in faults.calls) == ["small-up", "small-up", "small2-up", "small2-up"]
    faults.default["small-up"] = "503"  # one deployment dies: every request still succeeds on the other
    for _ in range(6):
        raw = c.chat.completions.with_raw_response.create(model="small", messages=MESSAGES)
        assert raw.headers["x-autarky-provider"] == "local2" and raw.parse().model == "small"
    assert gw.breakers["local"].state == OPEN and gw.breakers["local2"].failures == 0


def test_deployments_are_validated():
    base = {"providers": {"a": {"base_url": "http://127.0.0.1:9/v1"}}}
    with pytest.raises(UserError, match="deployments.0.provider: unknown provider 'b'"):
        parse_config({**base, "models": {"m": {"provider": "a", "deployments": [{"provider": "b"}]}}})
    with pytest.raises(UserError, match="listed twice"):
        parse_config({**base, "models": {"m": {"provider": "a", "deployments": [{"provider": "a"}]}}})


def _router(**windows) -> Router:
    cfg = parse_config({
        "providers": {"a": {"base_url": "http://127.0.0.1:9/v1", "in_house": True},
                      "b": {"base_url": "http://127.0.0.1:9/v1", "in_house": True}},
        "models": {"tiny": {"provider": "a", "context_window": windows.get("tiny", 16)},
                   "big": {"provider": "b", "context_window": windows.get("big", 1000)}},
        "tasks": {"t": {"candidates": ["tiny", "big"]}},
    })
    return Router(cfg, RoutesWatcher(None))


def test_a_candidate_whose_window_cannot_hold_the_prompt_is_skipped():
    decision = _router().decide("task:t", prompt_tokens=200)
    assert [t.model for t in decision.targets] == ["big"] and "tiny(context 16)" in decision.reason
    with pytest.raises(GatewayError) as info:
        _router().decide("tiny", prompt_tokens=200)
    assert info.value.status == 400 and "16 tokens" in info.value.message and info.value.param == "messages"


def test_the_gateway_refuses_a_prompt_no_window_holds(make_gateway, faults):
    _, url = make_gateway(models={"small": {"provider": "local", "upstream_id": "small-up", "context_window": 16}})
    r = httpx.post(url + "/v1/chat/completions",
                   json={"model": "small", "messages": [{"role": "user", "content": "word " * 200}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "16 tokens" in r.json()["error"]["message"] and faults.calls == []


OVERFLOW = (b'{"object": "error", "message": "This model\'s maximum context length is 16 tokens. However, you '
            b'requested 200 tokens (190 in the messages, 10 in the completion).", "code": 400}')


def test_an_upstream_context_overflow_fails_over_to_the_next_candidate():
    router = _router(tiny=8192)  # our estimate says it fits; the upstream knows better
    targets = router.decide("task:t").targets
    dispatcher = Dispatcher({}, {"a": Breaker(), "b": Breaker()}, RetryConfig(max_retries=0), Metrics())
    calls: list[str] = []

    async def call(target):
        calls.append(target.model)
        if target.model == "tiny":
            raise UpstreamError("a answered 400", status=400, retryable=False,
                                body=b'{"error": ' + OVERFLOW + b"}")
        return {"ok": target.model}

    outcome = Outcome()
    assert asyncio.run(dispatcher._attempts(targets, outcome, call)) == {"ok": "big"}
    assert calls == ["tiny", "big"] and outcome.failovers == 1
    assert dispatcher.breakers["a"].failures == 0  # the provider is healthy; the prompt was long

    async def always(target):
        raise UpstreamError("answered 400", status=400, retryable=False, body=b'{"error": ' + OVERFLOW + b"}")

    with pytest.raises(GatewayError) as info:  # nobody can hold it: the client's 400, not a 502
        asyncio.run(dispatcher._attempts(targets, Outcome(), always))
    assert info.value.status == 400


def test_a_keyed_audit_chain_is_not_extended_without_its_key(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/a.db"
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "secret-1")
    engine = open_store(url)
    create_key(engine, "team")
    monkeypatch.delenv(audit.AUDIT_KEY_ENV)
    with pytest.raises(UserError, match="AUTARKY_AUDIT_KEY"):
        create_key(engine, "team")
    with pytest.raises(UserError, match="Refusing to extend"):
        audit.check_key(engine)
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "another")
    with pytest.raises(UserError):
        audit.check_key(engine)
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "secret-1")
    create_key(engine, "team")
    assert audit.verify(engine) == (2, [])


def test_a_gateway_without_the_audit_key_refuses_to_start_on_a_keyed_chain(make_gateway, tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path}/keyed.db"
    monkeypatch.setenv(audit.AUDIT_KEY_ENV, "secret-1")
    create_key(open_store(store), "team")
    monkeypatch.delenv(audit.AUDIT_KEY_ENV)
    with pytest.raises(UserError, match="AUTARKY_AUDIT_KEY"):
        make_gateway(store=store)
