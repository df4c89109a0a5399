"""`autarky usage`: ledger rows written by the real ledger, summed by team/key/model/provider over a window."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from autarky.cli import app
from autarky.gateway.ledger import Ledger, Usage
from autarky.gateway.usage import parse_when, usage_report
from autarky.store.database import open_store

runner = CliRunner()
NOW = time.time()
DAY = 86400.0

# (age in days, team, key, model, provider, prompt, completion, usd, status)
ROWS = [
    (0.1, "finance", "k1", "nano", "local", 100, 50, 0.0, 200),
    (0.2, "finance", "k1", "gpt", "partner", 200, 100, 0.30, 200),
    (0.3, "sheets", "k2", "nano", "local", 10, 5, 0.0, 200),
    (2.0, "sheets", "k2", "gpt", "partner", 1000, 500, 1.50, 200),
    (3.0, "finance", "k1", None, None, 0, 0, 0.0, 429),  # rejected before any provider: no model, no tokens
    (40.0, "finance", "k3", "gpt", "partner", 4000, 2000, 6.00, 200),
]


@pytest.fixture
def store(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/usage.db"
    ledger = Ledger(open_store(url))
    for i, (age, team, key, model, provider, p, c, usd, status) in enumerate(ROWS):
        ledger.record(Usage(request_id=f"req-{i}", ts=NOW - age * DAY, endpoint="chat", status=status, key_id=key,
                            team=team, model=model, provider=provider, prompt_tokens=p, completion_tokens=c,
                            cost_usd=usd))
    assert ledger.flush() and ledger.written == len(ROWS)
    return url


def usage_json(*args: str) -> dict:
    result = runner.invoke(app, ["usage", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_totals_by_team_with_in_house_share(store):
    report = usage_json("--store", store, "--by", "team", "--in-house", "local")
    assert set(report) == {"since", "until", "by", "rows", "total"} and report["by"] == ["team"]
    assert report["since"] is None and report["until"] is None  # the default window is all time
    rows = {r["team"]: r for r in report["rows"]}
    assert [r["team"] for r in report["rows"]] == ["finance", "sheets"]  # highest spend first
    finance = rows["finance"]
    assert finance == {
        "team": "finance", "requests": 4, "errors": 1, "prompt_tokens": 4300, "completion_tokens": 2150,
        "tokens": 6450, "cost_usd": pytest.approx(6.30), "in_house_tokens": 150,
        "in_house_share": pytest.approx(150 / 6450),
    }
    total = report["total"]
    assert total["requests"] == 6 and total["tokens"] == 7965 and total["cost_usd"] == pytest.approx(7.80)
    assert total["in_house_share"] == pytest.approx(165 / 7965)


def test_window_and_several_groups(store):
    report = usage_json("--store", store, "--since", "1d", "--by", "team,provider")
    assert report["since"] is not None and report["until"] is None
    got = {(r["team"], r["provider"]): (r["requests"], r["tokens"], r["cost_usd"]) for r in report["rows"]}
    assert got == {("finance", "local"): (1, 150, 0.0), ("finance", "partner"): (1, 300, pytest.approx(0.30)),
                   ("sheets", "local"): (1, 15, 0.0)}
    assert report["total"]["in_house_share"] is None  # no --in-house and no --config: unknown, not 0

    week = usage_json("--store", store, "--since", "7d", "--until", "1d", "--by", "key")
    assert {r["key"]: r["requests"] for r in week["rows"]} == {"k1": 1, "k2": 1}
    assert week["total"]["cost_usd"] == pytest.approx(1.50)

    start = datetime.fromtimestamp(NOW - 10 * DAY, UTC).date().isoformat()
    dated = usage_json("--store", store, "--since", start, "--by", "model")
    assert {r["model"]: r["requests"] for r in dated["rows"]} == {"nano": 2, "gpt": 2, None: 1}


def test_in_house_providers_and_store_from_the_gateway_config(store, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'store = "{store}"\n[providers.local]\nbase_url = "http://127.0.0.1:9/v1"\nin_house = true\n'
                      '[providers.partner]\nbase_url = "http://127.0.0.1:9/v1"\n')
    report = usage_json("--config", str(config), "--by", "provider")
    assert {r["provider"]: r["in_house_share"] for r in report["rows"] if r["provider"]} == {"local": 1.0,
                                                                                            "partner": 0.0}
    assert report["total"]["requests"] == 6


def test_table_output(store):
    result = runner.invoke(app, ["usage", "--store", store, "--by", "team", "--in-house", "local"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("finance" in line and "6.3000" in line and "2.3%" in line for line in lines), result.stdout
    assert any("total" in line and "7.8000" in line for line in lines), result.stdout


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "bad --since 'yesterday'"),
    (["--until", "3 parsecs"], "bad --until '3 parsecs'"),
    (["--since", "1d", "--until", "2d"], "--since must be before --until"),
    (["--by", "colour"], "bad --by 'colour'"),
])
def test_bad_input_is_one_error_line(store, args, message):
    result = runner.invoke(app, ["usage", "--store", store, *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


def test_parse_when():
    assert parse_when("90m", 10_000.0) == 10_000.0 - 5400
    assert parse_when("2w", 0.0) == -14 * DAY
    assert parse_when("2026-11-01", 0.0) == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert parse_when("2026-11-01T12:00+01:00", 0.0) == datetime(2026, 11, 1, 11, tzinfo=UTC).timestamp()


def test_empty_store(tmp_path):
    report = usage_report(open_store(f"sqlite:///{tmp_path}/empty.db"), ["team"], in_house=["local"])
    assert report.rows == [] and report.total.requests == 0 and report.total.in_house_share is None
