"""The routing table: ranking, in-house preference, cost ceiling, Pareto front, and the exact TOML shape."""

from __future__ import annotations

import tomllib

import pytest

from autarky.evals.results import SuiteScore
from autarky.evals.routes import build_routes, pareto_front, routes_toml, write_routes

KEYS = {"model", "provider", "score", "ci_low", "ci_high", "usd_per_1k_tokens", "p50_latency_ms", "in_house"}


def score(model, mean, usd, in_house=False, task="spreadsheet", suite="spreadsheet"):
    return SuiteScore(model=model, suite=suite, task=task, metric="value_match", n=50, mean=mean, ci_low=mean - 0.1,
                      ci_high=mean + 0.1, p50_latency_ms=100.0, tokens=1000, cost_usd=usd, usd_per_1k_tokens=usd,
                      in_house=in_house, failures=0)


BOARD = [score("partner-big", 0.80, 0.010), score("partner-mini", 0.60, 0.001), score("ours", 0.77, 0.0, True),
         score("old", 0.50, 0.005)]


def test_ranked_by_score_without_policy():
    (route,) = build_routes(BOARD)
    assert [c.model for c in route.candidates] == ["partner-big", "ours", "partner-mini", "old"]


def test_in_house_preferred_within_margin_only():
    (route,) = build_routes(BOARD, prefer_in_house_within=5)
    assert route.candidates[0].model == "ours" and "within 5" in route.notes[0]
    (route,) = build_routes(BOARD, prefer_in_house_within=2)  # 3 points behind: the best partner keeps the task
    assert route.candidates[0].model == "partner-big"


def test_cost_ceiling_drops_expensive_candidates():
    (route,) = build_routes(BOARD, max_usd_per_1k=0.005)
    assert [c.model for c in route.candidates] == ["ours", "partner-mini", "old"]
    assert "partner-big" in route.notes[0]


def test_pareto_front():
    (route,) = build_routes(BOARD)
    # old is dominated (costlier and worse than partner-mini and ours); partner-mini is dominated by ours (free).
    assert route.pareto == ["ours", "partner-big"]
    assert pareto_front(route.candidates[:1]) == ["partner-big"]


def test_toml_has_exactly_the_gateway_keys(tmp_path):
    routes = build_routes(BOARD + [score("ours", 0.9, 0.0, True, task="slides", suite="slides")],
                          providers={"partner-big": "openai"})
    path = write_routes(routes, tmp_path / "routes.toml")
    data = tomllib.loads(path.read_text())
    assert set(data) == {"generated_at", "tasks"} and data["generated_at"].endswith("Z")
    assert set(data["tasks"]) == {"spreadsheet", "slides"}
    spreadsheet = data["tasks"]["spreadsheet"]
    assert set(spreadsheet) == {"pareto", "candidates"}
    assert all(set(c) == KEYS for c in spreadsheet["candidates"])
    first = spreadsheet["candidates"][0]
    assert first["model"] == "partner-big" and first["provider"] == "openai" and first["score"] == pytest.approx(0.8)
    assert spreadsheet["candidates"][1]["in_house"] is True
    assert not (tmp_path / "routes.toml.tmp").exists()


def test_task_names_that_need_quoting_round_trip():
    routes = build_routes([score("m", 0.5, 0.0, task="deck writing", suite="x")])
    assert "deck writing" in tomllib.loads(routes_toml(routes))["tasks"]


def test_the_evidence_for_the_order_is_written_with_it():
    asked = []

    def paired(task, a, b):
        asked.append((task, a, b))
        return 0.04

    (route,) = build_routes(BOARD, prefer_in_house_within=5, paired=paired)
    assert asked == [("spreadsheet", "ours", "partner-big"), ("spreadsheet", "partner-big", "partner-mini"),
                     ("spreadsheet", "partner-mini", "old")]
    assert [c.p_vs_next for c in route.candidates] == [0.04, 0.04, 0.04, None]
    assert route.candidates[0].in_house_margin == pytest.approx(3.0)
    data = tomllib.loads(routes_toml([route]))["tasks"]["spreadsheet"]
    assert data["candidates"][0]["p_vs_next"] == 0.04 and data["notes"] == route.notes
