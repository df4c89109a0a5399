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


def fixed_p(table):
    """A paired-evidence function from {frozenset({a, b}): p} (None for pairs it does not list)."""
    return lambda task, a, b: table.get(frozenset((a, b)))


def test_a_challenger_within_noise_never_moves_ahead_of_the_tie_break_order():
    # partner-big scores 3 points more than ours, but the paired test cannot tell them apart.
    p = fixed_p({frozenset(("partner-big", "ours")): 0.4, frozenset(("partner-mini", "ours")): 0.001,
                 frozenset(("old", "ours")): 0.001, frozenset(("partner-big", "partner-mini")): 0.001,
                 frozenset(("partner-big", "old")): 0.001, frozenset(("partner-mini", "old")): 0.2})
    (route,) = build_routes(BOARD, paired=p, alpha=0.05)
    # ours: in-house, first by tie-break; then partner-big beats the cheapest partner, partner-mini, beyond noise.
    assert [c.model for c in route.candidates] == ["ours", "partner-big", "partner-mini", "old"]
    first = route.candidates[0]
    assert first.in_house_margin is None and first.p_vs_next == 0.4
    assert "first by tie-break" in first.reason and "partner-big 0.800 (p=0.4 >= 0.05)" in first.reason
    assert "beats the tie-break choice partner-mini" in route.candidates[1].reason
    assert route.candidates[-1].reason is None and route.candidates[-1].p_vs_next is None


def test_a_challenger_that_wins_beyond_noise_takes_the_task_unless_the_in_house_margin_says_so():
    p = fixed_p({frozenset((a, b)): 0.01 for a in ("partner-big", "ours", "partner-mini", "old")
                 for b in ("partner-big", "ours", "partner-mini", "old") if a != b})
    (route,) = build_routes(BOARD, paired=p, alpha=0.05)
    assert [c.model for c in route.candidates] == ["partner-big", "ours", "partner-mini", "old"]
    assert "beats the tie-break choice ours" in route.candidates[0].reason and "p=0.01 < 0.05" in route.candidates[0].reason
    # A stricter alpha: the same evidence is noise.
    (route,) = build_routes(BOARD, paired=p, alpha=0.005)
    assert route.candidates[0].model == "ours"
    # The in-house margin puts ours first against the evidence, and says so.
    (route,) = build_routes(BOARD, prefer_in_house_within=5, paired=p, alpha=0.05)
    first = route.candidates[0]
    assert first.model == "ours" and first.in_house_margin == pytest.approx(3.0)
    assert first.reason.startswith("in-house margin: ours 0.770") and "within 5" in first.reason


def test_without_shared_items_there_is_no_evidence_and_ties_fall_to_cost():
    board = [score("a-dear", 0.9, 0.010), score("b-cheap", 0.5, 0.001), score("c-free", 0.5, 0.0)]
    (route,) = build_routes(board, paired=lambda task, a, b: None, alpha=0.05)
    assert [c.model for c in route.candidates] == ["c-free", "b-cheap", "a-dear"]
    assert "a-dear 0.900 (no shared items)" in route.candidates[0].reason


def test_store_backed_routes_use_mcnemar_on_the_stored_items(stub_server, store_url):
    from autarky.evals.api import evaluate, routes_from_store
    from autarky.evals.suite import load_suite
    from evals.stub_openai import Script

    # Over the first 40 chat-qa items the partner answers everything, ours only the France question: the partner
    # wins beyond noise; over 2 items the same behaviour is noise and the in-house model keeps the task.
    answers = {it["prompt"]: it["answers"][0] for it in load_suite("chat-qa").items}
    partner = stub_server(Script(answer=lambda prompt: next(a for q, a in answers.items() if q in prompt)))
    ours = stub_server(Script(answer=lambda prompt: "Paris" if "France" in prompt else "no idea"))
    evaluate({"partner": partner.base_url, "ours": ours.base_url}, ["chat-qa"], limit=2, store_url=store_url,
             in_house=["ours"], progress=False)
    (route,) = routes_from_store(store_url)
    assert route.candidates[0].model == "ours" and "within noise: partner 1.000 (p=1 >= 0.05)" in route.candidates[0].reason
    assert route.candidates[0].p_vs_next == 1.0  # 1 discordant item: exact p = 1
    evaluate({"partner": partner.base_url, "ours": ours.base_url}, ["chat-qa"], limit=40, store_url=store_url,
             in_house=["ours"], progress=False)
    (route,) = routes_from_store(store_url)
    first = route.candidates[0]
    assert first.model == "partner" and "mcnemar-chi2-cc p=" in first.reason and first.p_vs_next < 1e-6


def test_a_tie_break_winner_also_states_whom_it_beats_beyond_noise():
    """All in-house at $0 (the demo's spreadsheet task): the higher score is first by tie-break, and the reason
    names the candidates its lead is significant against, so the table says it won, not only that it was first."""
    board = [score("adapter", 0.175, 0.0, True), score("base", 0.0, 0.0, True), score("code-model", 0.0, 0.0, True)]
    p = fixed_p({frozenset(("adapter", "base")): 0.0156, frozenset(("adapter", "code-model")): 0.5,
                 frozenset(("base", "code-model")): 1.0})
    (route,) = build_routes(board, paired=p, alpha=0.05)
    first = route.candidates[0]
    assert first.model == "adapter" and "first by tie-break" in first.reason
    assert first.reason.endswith("beats beyond noise: base (p=0.0156)")
    assert "code-model" not in first.reason.split("beats beyond noise")[1]
