"""Budgets and limits that hold (issue 14): the reservation covers the worst case, concurrency cannot overshoot,
refusals say what holds the budget, one gateway per SQLite file, and every limit value is validated."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from autarky.cli import app
from autarky.errors import UserError
from autarky.gateway.auth import Limiter, create_key, list_keys
from autarky.store.database import open_store
from autarky.store.gateway_tables import gateway_keys

from .conftest import MASTER, avoid_minute_boundary, wait_for_ledger

MESSAGES = [{"role": "user", "content": "one two three"}]
# gpt here: $1000 / $2000 per 1M input / output tokens; the partner simulator answers max_tokens words.


def post(url: str, key: str, path: str = "/v1/chat/completions", **body) -> httpx.Response:
    return httpx.post(url + path, headers={"authorization": f"Bearer {key}"}, json=body, timeout=30)


def spent(gw) -> float:  # noqa: ANN001
    gw.ledger.flush()
    return sum(k["spent_usd"] for k in list_keys(gw.engine))


def test_the_reservation_covers_every_choice_and_every_prompt(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    key, _ = create_key(gw.engine, "t", budget_usd=0.05)
    # n = 32 choices of 8 tokens can cost 32 x $0.016: far over the budget, refused before any upstream call.
    many = post(url, key, model="gpt", messages=MESSAGES, max_tokens=8, n=32)
    assert many.status_code == 429 and many.json()["error"]["code"] == "budget_exceeded"
    assert "may cost up to" in many.json()["error"]["message"]
    batch = post(url, key, "/v1/completions", model="gpt", prompt=["one two three"] * 20, max_tokens=8)
    assert batch.status_code == 429 and batch.json()["error"]["code"] == "budget_exceeded"
    assert faults.calls == []
    # No max_tokens: the reservation is the gateway's default_max_tokens (1024 here), which does not fit either.
    assert post(url, key, model="gpt", messages=MESSAGES).status_code == 429
    assert post(url, key, model="gpt", messages=MESSAGES, max_tokens=8).status_code == 200
    assert spent(gw) <= 0.05


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_requests_cannot_overshoot_a_token_limit(make_gateway, faults, backend, request):
    store = request.getfixturevalue("pg_store") if backend == "postgres" else None
    gw, url = make_gateway(store=store, require_keys=True)
    key, _ = create_key(gw.engine, "t", tpm=50)
    faults.default["small-up"] = "latency:0.5"  # all 20 are in flight together
    avoid_minute_boundary(margin_s=15)
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: post(url, key, model="small", messages=MESSAGES, max_tokens=8), range(20)))
    ok = [r for r in replies if r.status_code == 200]
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    worst_case = 3 + 4 + 5 + 1 + 8  # template + prompt estimate + max_tokens: what one request may reserve
    assert 1 <= len(ok) < 20 and used <= 50 + worst_case, (len(ok), used)
    refused = [r for r in replies if r.status_code == 429]
    assert refused and all(r.json()["error"]["code"] == "token_rate_limit_exceeded" for r in refused)


def test_concurrent_requests_cannot_overshoot_a_budget(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    key, _ = create_key(gw.engine, "t", budget_usd=0.1)
    faults.default["gpt-up"] = "latency:0.3"
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: post(url, key, model="gpt", messages=MESSAGES, max_tokens=8), range(20)))
    assert sum(r.status_code == 200 for r in replies) >= 3
    wait_for_ledger(gw, 20)
    assert spent(gw) <= 0.1


def test_a_refusal_says_when_requests_in_flight_hold_the_budget(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    key, _ = create_key(gw.engine, "t", budget_usd=0.05)  # room for one $0.028 reservation, not two
    faults.default["gpt-up"] = "latency:1.0"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, url, key, model="gpt", messages=MESSAGES, max_tokens=8)
        time.sleep(0.4)
        refused = post(url, key, model="gpt", messages=MESSAGES, max_tokens=8)
        assert slow.result().status_code == 200
    message = refused.json()["error"]["message"]
    assert refused.status_code == 429 and "in flight" in message and "$0.0000 spent" in message, message
    assert "budget of $0.0500 spent" not in message


def test_two_gateways_on_one_sqlite_file_are_refused(tmp_path):
    store = f"sqlite:///{tmp_path}/shared.db"
    open_store(store)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom autarky.gateway.auth import Limiter\n"
         "from autarky.store.database import open_store\n"
         f"Limiter(open_store({store!r}), shared=False)\nprint('holding', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(UserError, match="PostgreSQL"):
            Limiter(open_store(store), shared=False)
    finally:
        holder.kill()
        holder.wait()
    Limiter(open_store(store), shared=False)  # the first one is gone: the file is free again


@pytest.mark.parametrize("field,value", [("budget_usd", math.nan), ("budget_usd", math.inf), ("budget_usd", True),
                                         ("budget_usd", "5"), ("rpm", 1.5), ("rpm", False), ("tpm", "10"),
                                         ("tpm", -1), ("models", "small"), ("models", [1]), ("models", [""])])
def test_limit_values_are_validated(tmp_path, field, value):
    engine = open_store(f"sqlite:///{tmp_path}/keys.db")
    with pytest.raises(UserError):
        create_key(engine, "t", **{field: value})
    assert list_keys(engine) == []


def test_cli_and_admin_api_refuse_bad_limits_and_unknown_teams(make_gateway, faults, tmp_path):
    runner = CliRunner()
    store = f"sqlite:///{tmp_path}/cli.db"
    for args in (["--budget-usd", "nan"], ["--budget-usd", "inf"], ["--rpm", "1.5"], ["--tpm", "yes"]):
        made = runner.invoke(app, ["keys", "create", "--team", "t", "--store", store, *args])
        assert made.exit_code == 2 and "Error" in made.output and "Traceback" not in made.output, args
    config = tmp_path / "gw.toml"
    config.write_text('[teams.sheets]\n[models.m]\nprovider = "p"\n[providers.p]\nkind = "openai"\n'
                      'base_url = "http://127.0.0.1:9/v1"\n')
    made = runner.invoke(app, ["keys", "create", "--team", "shets", "--config", str(config), "--store", store])
    assert made.exit_code == 2 and "not in the config's [teams]" in made.output
    gw, url = make_gateway(require_keys=True)
    admin = {"authorization": f"Bearer {MASTER}"}
    for body in ({"team": "secure", "budget_usd": True}, {"team": "secure", "budget_usd": "1"},
                 {"team": "secure", "rpm": 2.5}, {"team": "secure", "models": "small"},
                 {"team": "secure", "models": [1, 2]}, {"team": "nobody"}):
        r = httpx.post(url + "/admin/keys", json=body, headers=admin)
        assert r.status_code == 400 and r.json()["error"]["message"], body
    huge = httpx.post(url + "/admin/keys", content=b'{"team": "secure", "budget_usd": 1e400}', headers=admin)
    assert huge.status_code == 400
    assert httpx.post(url + "/admin/keys", json={"team": "secure", "rpm": 3}, headers=admin).status_code == 201


def test_a_bad_model_list_in_the_store_neither_crashes_listing_nor_allows_everything(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    key, record = create_key(gw.engine, "t", models=["small"])
    good, _ = create_key(gw.engine, "t")
    with gw.engine.begin() as conn:
        conn.execute(update(gateway_keys).where(gateway_keys.c.id == record.id).values(models='"small"'))
    [bad] = [k for k in list_keys(gw.engine) if k["id"] == record.id]
    assert bad["models"] and "invalid" in bad["models"][0]
    listing = CliRunner().invoke(app, ["keys", "list", "--store", str(gw.engine.url)])
    assert listing.exit_code == 0 and record.id in listing.output, listing.output
    assert post(url, key, model="small", messages=MESSAGES).status_code == 403
    assert post(url, good, model="small", messages=MESSAGES).status_code == 200
