"""Virtual keys: CLI and admin API, stored only as hashes; rate limits and budgets enforced."""

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from autarky.cli import app
from autarky.gateway.auth import create_key, list_keys
from autarky.store.database import open_store
from autarky.store.gateway_tables import gateway_keys

from .conftest import MASTER, avoid_minute_boundary

MESSAGES = [{"role": "user", "content": "one two three"}]


def chat(url: str, key: str, model: str = "small", **kw) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "messages": MESSAGES, **kw}, timeout=20)


def test_cli_create_list_revoke(tmp_path):
    store = f"sqlite:///{tmp_path}/keys.db"
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--team", "sheets", "--budget-usd", "2.5", "--rpm", "10",
                               "--models", "small", "--models", "gpt,claude", "--store", store])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    assert key.startswith("sk-ak-") and len(key) > 30
    engine = open_store(store)
    [row] = list_keys(engine)
    assert row["team"] == "sheets" and row["budget_usd"] == 2.5 and row["models"] == ["small", "gpt", "claude"]
    with engine.connect() as conn:
        stored = conn.execute(select(gateway_keys)).one()
    assert key not in repr(tuple(stored)) and (tmp_path / "keys.db").read_bytes().find(key.encode()) == -1
    listing = runner.invoke(app, ["keys", "list", "--store", store])
    assert row["id"] in listing.stdout and "sheets" in listing.stdout
    revoked = runner.invoke(app, ["keys", "revoke", row["id"], "--store", store])
    assert revoked.exit_code == 0 and list_keys(engine)[0]["revoked"]
    again = runner.invoke(app, ["keys", "revoke", row["id"], "--store", store])
    assert again.exit_code == 2 and "no active key" in again.output
    bad = runner.invoke(app, ["keys", "create", "--team", "x", "--rpm", "-1", "--store", store])
    assert bad.exit_code == 2 and "--rpm must be >= 0" in bad.output


def test_admin_api_and_revocation(make_gateway, faults):
    gw, url = make_gateway(require_keys=True, teams={"t": {}})  # a key's team must be in the config
    admin = {"authorization": f"Bearer {MASTER}"}
    assert httpx.post(url + "/admin/keys", json={"team": "t"}).status_code == 401
    assert httpx.post(url + "/admin/keys", json={"team": "t"}, headers={"authorization": "Bearer nope"}).status_code == 401
    made = httpx.post(url + "/admin/keys", json={"team": "t", "models": ["small"]}, headers=admin)
    assert made.status_code == 201
    key, key_id = made.json()["key"], made.json()["id"]
    assert chat(url, key).status_code == 200
    denied = chat(url, key, model="gpt")
    assert denied.status_code == 403 and "model not allowed" in denied.json()["error"]["message"]
    listed = httpx.get(url + "/admin/keys", headers=admin).json()["data"]
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
    assert httpx.delete(url + f"/admin/keys/{key_id}", headers=admin).status_code == 200
    r = chat(url, key)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert httpx.post(url + "/admin/keys", json={"team": "t", "oops": 1}, headers=admin).status_code == 400


def test_rpm_limit(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    key, _ = create_key(gw.engine, "t", rpm=3)
    avoid_minute_boundary()
    codes = [chat(url, key).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = chat(url, key)
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and 1 <= int(r.headers["retry-after"]) <= 60
    assert len(faults.calls) == 3


def test_tpm_limit(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    key, _ = create_key(gw.engine, "t", tpm=20)  # each request: 3 prompt + 8 completion tokens
    avoid_minute_boundary()
    codes = [chat(url, key).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_budget_is_enforced_before_the_request(make_gateway, faults):
    gw, url = make_gateway(require_keys=True)
    # gpt costs $1000/$2000 per 1M in/out tokens here: 3 in + 8 out = $0.019 per request; max_tokens=8 reserves
    # at most (prompt estimate + 8) tokens, so a $0.05 budget admits two requests and refuses the third.
    key, record = create_key(gw.engine, "t", budget_usd=0.05)
    codes = [chat(url, key, model="gpt", max_tokens=8).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = chat(url, key, model="gpt", max_tokens=8)
    assert r.json()["error"]["code"] == "budget_exceeded"
    assert chat(url, key, model="small").status_code == 200  # a free model still fits the $0.012 left
    gw.ledger.flush()
    [row] = list_keys(gw.engine)
    assert row["spent_usd"] == pytest.approx(0.038) and row["reserved_usd"] == pytest.approx(0.0)


def test_failed_requests_release_their_reservation(make_gateway, faults):
    gw, url = make_gateway(require_keys=True, retry={"max_retries": 0}, breaker={"failure_threshold": 100})
    key, _ = create_key(gw.engine, "t", budget_usd=0.03)  # room for one gpt reservation (~$0.028) at a time
    faults.default["gpt-up"] = "503"
    assert [chat(url, key, model="gpt", max_tokens=8).status_code for _ in range(3)] == [502, 502, 502]
    faults.default["gpt-up"] = "ok"
    assert chat(url, key, model="gpt", max_tokens=8).status_code == 200  # nothing was left reserved


def test_anthropic_sdk_authenticates_with_x_api_key(make_gateway, faults):
    import anthropic

    gw, url = make_gateway(require_keys=True)
    key, _ = create_key(gw.engine, "t")
    msg = anthropic.Anthropic(base_url=url, api_key=key).messages.create(
        model="small", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text.endswith("small-up")
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=url, api_key="sk-ak-wrong", max_retries=0).messages.create(
            model="small", max_tokens=3, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("field, value", [
    ("budget_usd", "x" * 100_000), ("team", "t" * 100_000), ("models", ["m" * 100_000]),
    ("models", ["m"] * 5000), ("f" * 100_000, 1),
])
def test_admin_api_errors_never_echo_unbounded_values(make_gateway, faults, field, value):
    _, url = make_gateway()  # no [teams] in the config: any team name, but a bounded one (the column holds 128)
    body = {"team": "t", field: value}
    r = httpx.post(url + "/admin/keys", json=body, headers={"authorization": f"Bearer {MASTER}"}, timeout=20)
    assert r.status_code == 400 and len(r.content) < 1000, r.content[:200]


def test_cli_refuses_a_team_too_long_for_the_store(tmp_path):
    result = CliRunner().invoke(app, ["keys", "create", "--team", "t" * 200, "--store", f"sqlite:///{tmp_path}/k.db"])
    assert result.exit_code == 2 and "--team: at most 128 characters" in result.output


def test_keys_list_on_a_bad_store_prints_only_the_error(tmp_path):
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    result = CliRunner().invoke(app, ["keys", "list", "--store", f"sqlite:///{tmp_path}/notes.db"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
