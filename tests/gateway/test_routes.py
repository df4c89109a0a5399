"""Routing tables (eval-written or hand-written), hot reload, and config errors that name the field."""

import os
import time

import httpx
import pytest
from typer.testing import CliRunner

from autarky.cli import app
from autarky.errors import UserError
from autarky.gateway.config import load_config
from autarky.gateway.routes import load_routing_table

TABLE = """
generated_at = "2026-11-23T05:00:00Z"
[tasks.spreadsheet]
pareto = ["small", "gpt"]
[[tasks.spreadsheet.candidates]]
model = "claude"
provider = "claude"
score = 0.61
usd_per_1k_tokens = 0.009
p50_latency_ms = 900.0
in_house = false
[[tasks.spreadsheet.candidates]]
model = "small"
score = {small}
ci_low = 0.30
ci_high = 0.55
usd_per_1k_tokens = 0.0
p50_latency_ms = 120.0
in_house = true
[[tasks.spreadsheet.candidates]]
model = "small2"
score = {small}
usd_per_1k_tokens = 0.0
p50_latency_ms = 80.0
"""


def write(path, small: float) -> None:
    path.write_text(TABLE.replace("{small}", str(small)))
    stat = path.stat()  # make the change visible even within one mtime tick
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def ask(url: str, **headers) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=headers,
                      json={"model": "task:spreadsheet", "messages": [{"role": "user", "content": "x"}]})


def test_table_orders_by_score_then_cost_then_latency_and_hot_reloads(make_gateway, faults, tmp_path):
    table = tmp_path / "routes.toml"
    write(table, 0.42)
    gw, url = make_gateway(routes=str(table), policy={"order": "score"})
    gw.routes.poll_s = 0.0
    r = ask(url)
    assert r.headers["x-autarky-model"] == "claude"
    # The table's 3 candidates, then the config's task candidate the table lacks, as a fallback.
    assert "task=spreadsheet; 4 allowed of 4; by score,cost,latency" in r.headers["x-autarky-route-reason"]
    # Same score and cost: the faster one (small2, 80 ms) wins; the header task works like the model prefix.
    write(table, 0.9)
    r = httpx.post(url + "/v1/chat/completions", headers={"x-autarky-task": "spreadsheet"},
                   json={"model": "anything", "messages": [{"role": "user", "content": "x"}]})
    assert r.headers["x-autarky-model"] == "small2"
    table.write_text("this is [not toml")
    os.utime(table, ns=(time.time_ns(), time.time_ns() + 5_000_000))
    assert ask(url).headers["x-autarky-model"] == "small2"  # a broken edit keeps the last good table
    assert "not valid TOML" in httpx.get(url + "/health").json()["routes_error"]
    gw.ledger.flush()
    from sqlalchemy import text

    with gw.engine.connect() as conn:
        actions = [r[0] for r in conn.execute(text("SELECT action FROM gateway_audit ORDER BY seq"))]
    assert actions == ["routes.reload", "routes.reload_failed"]


def test_table_provider_mismatch_and_unknown_models_are_dropped(make_gateway, faults, tmp_path):
    table = tmp_path / "routes.toml"
    table.write_text('[[tasks.t.candidates]]\nmodel = "small"\nprovider = "partner"\n'
                     '[[tasks.t.candidates]]\nmodel = "ghost"\n')
    _, url = make_gateway(routes=str(table))
    r = httpx.post(url + "/v1/chat/completions", json={"model": "task:t", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 403 and "small(not configured)" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "task:none", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"


def test_bad_files_name_the_field(tmp_path):
    bad = tmp_path / "gw.toml"
    bad.write_text('[providers.local]\nkind = "grpc"\nbase_url = "http://x"\n')
    with pytest.raises(UserError, match="field providers.local.kind"):
        load_config(bad)
    bad.write_text('[providers.local]\nbase_url = "http://x"\n[models.m]\nprovider = "nope"\n')
    with pytest.raises(UserError, match="models.m.provider: unknown provider 'nope'"):
        load_config(bad)
    bad.write_text('[policy]\nself_sufficent = true\n')
    with pytest.raises(UserError, match="policy.self_sufficent"):
        load_config(bad)
    routes = tmp_path / "r.toml"
    routes.write_text('[[tasks.t.candidates]]\nscore = 1\n')
    with pytest.raises(UserError, match="tasks.t.candidates.0.model"):
        load_routing_table(routes)
    result = CliRunner().invoke(app, ["gateway", "--config", str(bad)])
    assert result.exit_code == 2 and "self_sufficent" in result.output


def test_example_config_is_valid():
    from pathlib import Path

    example = Path(__file__).parents[2] / "examples" / "gateway.toml"
    config = load_config(example)
    assert config.providers and config.models and config.tasks
    assert load_routing_table(Path(config.routes)).tasks


def test_table_written_by_the_eval_stage_keeps_its_rank(make_gateway, faults, tmp_path):
    """The contract with `autarky eval routes`: its writer's output loads, its rank (which may put an in-house
    model above a better-scoring partner on purpose) is kept by default, and unmeasured (nan) values are safe."""
    from autarky.evals.routes import Candidate, TaskRoute, write_routes

    nan = float("nan")
    fields = ("model", "provider", "score", "ci_low", "ci_high", "usd_per_1k_tokens", "p50_latency_ms", "in_house")
    route = TaskRoute(task="spreadsheet", candidates=[Candidate(**dict(zip(fields, values, strict=True))) for values in [
        ("small", "local", 0.40, 0.3, 0.5, 0.0, nan, True),  # preferred in-house, 2 points lower
        ("gpt", "partner", 0.42, 0.3, 0.5, 0.0015, 300.0, False),
        ("small2", "", nan, nan, nan, 0.0, nan, True),
    ]], pareto=["small"], notes=["in-house small preferred"])
    table = write_routes([route], tmp_path / "routes.toml")
    gw, url = make_gateway(routes=str(table))
    r = ask(url)
    assert r.headers["x-autarky-model"] == "small" and "by table rank" in r.headers["x-autarky-route-reason"]
    plan = gw.router.decide("task:spreadsheet")
    # The config's task candidate that the table lacks (claude) follows as a fallback.
    assert [t.model for t in plan.targets] == ["small", "gpt", "small2", "claude"]
    scored = make_gateway(routes=str(table), policy={"order": "score"})[0].router.decide("task:spreadsheet")
    assert [t.model for t in scored.targets] == ["gpt", "small", "small2", "claude"]  # nan, then -inf, rank last


def test_gateway_starts_before_the_table_exists_and_picks_it_up(make_gateway, faults, tmp_path):
    table = tmp_path / "routes.toml"
    gw, url = make_gateway(routes=str(table))  # `autarky eval routes` has not run yet
    gw.routes.poll_s = 0.0
    assert ask(url).headers["x-autarky-model"] == "gpt"  # the config's candidate list for the task
    assert "does not exist (yet)" in httpx.get(url + "/health").json()["routes_error"]
    write(table, 0.42)
    assert ask(url).headers["x-autarky-model"] == "claude"  # the table, once written, takes over
    assert httpx.get(url + "/health").json()["routes_generation"] == 1


def test_route_reason_header_shows_the_tables_evidence(make_gateway, faults, tmp_path):
    table = tmp_path / "routes.toml"
    table.write_text('[[tasks.spreadsheet.candidates]]\nmodel = "small"\nscore = 0.4\nci_low = 0.3\nci_high = 0.5\n'
                     'p_vs_next = 0.2\nin_house_margin = 2.0\nreason = "in-house margin: 2.0 points below gpt"\n'
                     '[[tasks.spreadsheet.candidates]]\nmodel = "gpt"\nscore = 0.42\n')
    _, url = make_gateway(routes=str(table))
    reason = ask(url).headers["x-autarky-route-reason"]
    assert ("evidence small: score=0.4 ci=0.3..0.5 p_vs_next=0.2 in_house_margin=2 "
            "(in-house margin: 2.0 points below gpt)") in reason
