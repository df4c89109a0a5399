"""Retries, Retry-After, failover, circuit breaker, and streaming failures before and after the first byte."""

import time

import httpx
import openai
import pytest

from autarky.gateway.breaker import CLOSED, HALF_OPEN, OPEN, Breaker

from .conftest import wait_for_ledger

MESSAGES = [{"role": "user", "content": "hello"}]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=20)


def upstream_models(faults) -> list[str]:
    return [m for _, m in faults.calls]


def test_retries_5xx_reset_and_malformed_then_succeeds(make_gateway, faults):
    gw, url = make_gateway()
    faults.script("small-up", "500", "reset")
    raw = client(url).chat.completions.with_raw_response.create(model="small", messages=MESSAGES)
    assert raw.parse().choices[0].message.content.endswith("small-up")
    assert upstream_models(faults) == ["small-up"] * 3
    faults.script("small-up", "malformed")
    client(url).chat.completions.create(model="small", messages=MESSAGES)
    wait_for_ledger(gw, 2)
    from sqlalchemy import select

    from autarky.store.gateway_tables import gateway_usage
    with gw.engine.connect() as conn:
        rows = conn.execute(select(gateway_usage.c.retries, gateway_usage.c.status)).all()
    assert sorted(rows) == [(1, 200), (2, 200)]


def test_retry_after_is_honoured(make_gateway, faults):
    _, url = make_gateway()
    faults.script("small-up", "429:1")
    start = time.monotonic()
    client(url).chat.completions.create(model="small", messages=MESSAGES)
    assert time.monotonic() - start >= 1.0
    assert upstream_models(faults) == ["small-up", "small-up"]


def test_long_retry_after_fails_over_instead_of_waiting(make_gateway, faults):
    _, url = make_gateway()
    faults.script("gpt-up", "429:30")
    start = time.monotonic()
    raw = client(url).chat.completions.with_raw_response.create(model="task:spreadsheet", messages=MESSAGES)
    assert time.monotonic() - start < 5
    assert raw.headers["x-autarky-model"] == "small"
    assert "failover from partner (429)" in raw.headers["x-autarky-route-reason"]
    assert raw.headers["x-autarky-failovers"] == "1"
    assert upstream_models(faults) == ["gpt-up", "small-up"]


def test_timeout_fails_over_and_all_failing_is_502(make_gateway, faults):
    _, url = make_gateway(retry={"max_retries": 0}, providers={"partner": {"timeout_s": 0.5}})
    faults.script("gpt-up", "stall:5")
    raw = client(url).chat.completions.with_raw_response.create(model="task:spreadsheet", messages=MESSAGES)
    assert raw.headers["x-autarky-model"] == "small"
    for m in ("gpt-up", "small-up", "claude-up"):
        faults.default[m] = "503"
    with pytest.raises(openai.InternalServerError) as info:
        client(url).chat.completions.create(model="task:spreadsheet", messages=MESSAGES)
    assert info.value.status_code == 502 and "all 3 allowed candidate(s) failed" in str(info.value)


def test_client_errors_are_passed_through_without_failover(make_gateway, faults):
    _, url = make_gateway()
    faults.script("gpt-up", "400")
    with pytest.raises(openai.BadRequestError, match="injected 400"):
        client(url).chat.completions.create(model="task:spreadsheet", messages=MESSAGES)
    assert upstream_models(faults) == ["gpt-up"]


def test_breaker_opens_then_half_open_probe_closes_it(make_gateway, faults):
    gw, url = make_gateway(retry={"max_retries": 0}, breaker={"failure_threshold": 2, "cooldown_s": 0.5})
    faults.default["gpt-up"] = "500"
    c = client(url)
    for _ in range(2):
        c.chat.completions.create(model="task:spreadsheet", messages=MESSAGES)
    assert gw.breakers["partner"].state == OPEN
    faults.calls.clear()
    for _ in range(3):  # open: the partner is skipped without being called
        raw = c.chat.completions.with_raw_response.create(model="task:spreadsheet", messages=MESSAGES)
        assert raw.headers["x-autarky-model"] == "small"
    assert "gpt-up" not in upstream_models(faults)
    metrics = httpx.get(url + "/metrics").text
    assert 'autarky_gateway_breaker_state{provider="partner"} 1.0' in metrics
    time.sleep(0.6)
    faults.default["gpt-up"] = "ok"
    raw = c.chat.completions.with_raw_response.create(model="task:spreadsheet", messages=MESSAGES)
    assert raw.headers["x-autarky-model"] == "gpt"  # the half-open probe succeeded
    assert gw.breakers["partner"].state == CLOSED


def test_breaker_unit_half_open_admits_one_probe():
    now = [0.0]
    b = Breaker(failure_threshold=2, cooldown_s=10, clock=lambda: now[0])
    b.failure()
    assert b.allow() and b.state == CLOSED
    b.failure()
    assert b.state == OPEN and not b.allow()
    now[0] = 10.0
    assert b.allow() and b.state == HALF_OPEN
    assert not b.allow()  # one probe at a time
    b.failure()
    assert b.state == OPEN and not b.allow()
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow() and b.allow()


def test_everything_open_is_503_with_retry_after(make_gateway, faults):
    gw, url = make_gateway(breaker={"failure_threshold": 1, "cooldown_s": 30}, retry={"max_retries": 0})
    faults.default["small-up"] = "500"
    c = client(url)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="small", messages=MESSAGES)
    r = httpx.post(url + "/v1/chat/completions", json={"model": "small", "messages": MESSAGES})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "providers_unavailable"


@pytest.mark.parametrize("fault", ["500", "reset", "malformed"])
def test_stream_fails_over_before_first_byte(make_gateway, faults, fault):
    _, url = make_gateway(retry={"max_retries": 0})
    faults.script("gpt-up", fault)
    with client(url).chat.completions.with_streaming_response.create(
        model="task:spreadsheet", messages=MESSAGES, stream=True
    ) as resp:
        assert resp.headers["x-autarky-model"] == "small"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text.endswith("small-up")


@pytest.mark.parametrize("fault", ["die:2", "inband", "stall:5"])
def test_stream_error_after_first_byte_is_in_band(make_gateway, faults, fault):
    gw, url = make_gateway(retry={"max_retries": 0}, providers={"local": {"timeout_s": 0.5}})
    faults.script("small-up", fault)
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=20,
                      json={"model": "small", "messages": MESSAGES, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"error"' in lines[-2] and lines[-1] == "data: [DONE]"
    assert upstream_models(faults) == ["small-up"]  # no failover once bytes went out
    faults.script("small-up", fault)
    with pytest.raises(openai.APIError, match="mid-stream"):
        list(client(url).chat.completions.create(model="small", messages=MESSAGES, stream=True))
    wait_for_ledger(gw, 2)
    from sqlalchemy import select

    from autarky.store.gateway_tables import gateway_usage
    with gw.engine.connect() as conn:
        statuses = [r[0] for r in conn.execute(select(gateway_usage.c.status))]
    assert statuses == [502, 502]


def test_anthropic_stream_error_after_first_byte(make_gateway, faults):
    import anthropic

    _, url = make_gateway(retry={"max_retries": 0})
    faults.script("claude-up", "inband")
    with pytest.raises(anthropic.APIStatusError):
        with anthropic.Anthropic(base_url=url, api_key="x", max_retries=0).messages.stream(
            model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            list(stream.text_stream)


def test_client_disconnect_cancels_the_upstream_stream(make_gateway, faults):
    gw, url = make_gateway()
    faults.script("small-up", "stall:30")
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=20,
                      json={"model": "small", "messages": MESSAGES, "stream": True}) as r:
        next(r.iter_lines())  # first bytes arrived; now hang up while upstream stalls
    wait_for_ledger(gw, 1)
    from sqlalchemy import select

    from autarky.store.gateway_tables import gateway_usage
    with gw.engine.connect() as conn:
        row = conn.execute(select(gateway_usage.c.status, gateway_usage.c.latency_ms)).one()
    assert row.status == 499 and row.latency_ms < 10_000


def test_client_disconnect_cancels_a_non_streamed_call(make_gateway, faults):
    gw, url = make_gateway()
    faults.script("small-up", "latency:30")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", timeout=0.5, json={"model": "small", "messages": MESSAGES})
    wait_for_ledger(gw, 1)
    from sqlalchemy import select

    from autarky.store.gateway_tables import gateway_usage
    with gw.engine.connect() as conn:
        row = conn.execute(select(gateway_usage.c.status, gateway_usage.c.latency_ms)).one()
    assert row.status == 499 and row.latency_ms < 5_000  # gave up on the upstream at once, not after 30 s


def test_a_provider_without_the_model_fails_over_without_retrying(make_gateway, faults):
    gw, url = make_gateway()
    faults.script("gpt-up", "404")
    raw = client(url).chat.completions.with_raw_response.create(model="task:spreadsheet", messages=MESSAGES)
    assert raw.headers["x-autarky-model"] == "small" and "failover from partner (404)" in raw.headers[
        "x-autarky-route-reason"]
    assert upstream_models(faults) == ["gpt-up", "small-up"]
    assert gw.breakers["partner"].failures == 0
