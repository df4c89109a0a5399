"""Arena ratings: the cross-check cases of shared/reference/arena.md, and agreement with FastChat's solver."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from autarky.errors import UserError
from autarky.evals.arena import (
    arena_ratings,
    bootstrap_weights,
    collapse,
    fit_bt_batched,
    online_elo,
    rank_ub,
    to_elo_scale,
)
from autarky.evals.battles import Battle, load_battles


def games(*spec: tuple[str, str, int, int]) -> list[Battle]:
    out = []
    for a, b, wins_a, wins_b in spec:
        out += [Battle(a, b, "model_a")] * wins_a + [Battle(a, b, "model_b")] * wins_b
    return out


def test_wikipedia_example_matches_reference():
    battles = games(("A", "B", 2, 3), ("A", "D", 1, 4), ("B", "C", 5, 3), ("C", "D", 1, 3))
    rows = {r.model: r for r in arena_ratings(battles, rounds=0)}
    for model, expected in {"A": 922.43, "B": 1007.37, "C": 927.77, "D": 1142.44}.items():
        assert rows[model].rating == pytest.approx(expected, abs=0.01)
    assert np.mean([r.rating for r in rows.values()]) == pytest.approx(1000.0, abs=1e-9)


def test_ties_count_half_and_both_kinds_of_tie_are_equal():
    battles = games(("A", "B", 3, 1)) + [Battle("A", "B", "tie"), Battle("A", "B", "tie (bothbad)")]
    rows = {r.model: r.rating for r in arena_ratings(battles, rounds=0)}
    assert rows["A"] == pytest.approx(1060.206, abs=1e-3)
    assert rows["B"] == pytest.approx(939.794, abs=1e-3)
    both_bad = games(("A", "B", 3, 1)) + [Battle("A", "B", "tie"), Battle("A", "B", "both_bad")]
    assert {r.model: r.rating for r in arena_ratings(both_bad, rounds=0)} == pytest.approx(rows)


def test_online_elo_matches_reference():
    elo = online_elo([Battle("A", "B", "model_a"), Battle("B", "C", "tie"), Battle("C", "A", "model_a")])
    assert elo == pytest.approx({"A": 999.9884, "B": 998.0115, "C": 1002.0001}, abs=1e-4)


def test_anchor_model_is_pinned_to_1114():
    battles = games(("mixtral-8x7b-instruct-v0.1", "x", 3, 1), ("x", "y", 2, 2))
    rows = {r.model: r.rating for r in arena_ratings(battles, rounds=0)}
    assert rows["mixtral-8x7b-instruct-v0.1"] == pytest.approx(1114.0)
    assert rows["mixtral-8x7b-instruct-v0.1"] - rows["x"] == pytest.approx(400 * math.log10(3), abs=1e-6)


def test_rank_ub_counts_models_whose_lower_bound_beats_my_upper_bound():
    q025 = np.array([1100.0, 1050.0, 900.0])
    q975 = np.array([1200.0, 1120.0, 1000.0])
    assert rank_ub(q025, q975).tolist() == [1, 1, 3]


def fastchat_fit(cells, weights):
    """FastChat's bt_loss_and_grad + L-BFGS-B, as the reference describes."""
    alpha = math.log(10.0)

    def loss_and_grad(r):
        p = expit(alpha * (r[cells.a] - r[cells.b]))
        loss = -((np.log(p) * cells.y + np.log(1 - p) * (1 - cells.y)) * weights).sum()
        g = -alpha * (cells.y - p) * weights
        grad = np.zeros_like(r)
        np.add.at(grad, cells.a, g)
        np.add.at(grad, cells.b, -g)
        return loss, grad

    n = len(cells.models)
    return minimize(loss_and_grad, np.zeros(n), jac=True, method="L-BFGS-B",
                    options={"maxiter": 100, "gtol": 1e-6}).x


def test_newton_fit_and_bootstrap_agree_with_fastchat_recipe():
    rng = np.random.default_rng(1)
    strength = rng.normal(0, 0.4, 8)
    battles = []
    for _ in range(5000):
        a, b = rng.choice(8, 2, replace=False)
        p = 1 / (1 + 10 ** (strength[b] - strength[a]))
        u = rng.random()
        winner = "tie" if u < 0.1 else ("model_a" if u < 0.1 + 0.9 * p else "model_b")
        battles.append(Battle(f"m{a}", f"m{b}", winner))
    cells = collapse(battles)
    ours = fit_bt_batched(cells, cells.counts[None, :])[0]
    np.testing.assert_allclose(to_elo_scale(ours, cells.models), to_elo_scale(fastchat_fit(cells, cells.counts), cells.models),
                               atol=0.01)
    weights = bootstrap_weights(cells, rounds=5)
    boot = fit_bt_batched(cells, weights, r0=ours)
    for i in range(5):
        np.testing.assert_allclose(to_elo_scale(boot[i], cells.models),
                                   to_elo_scale(fastchat_fit(cells, weights[i]), cells.models), atol=0.01)
    rows = arena_ratings(battles, rounds=100)
    assert all(r.ci_low < r.rating < r.ci_high for r in rows)
    assert rows == arena_ratings(battles, rounds=100)  # seeded: the same CIs every time
    assert [(r.rank_ub, -r.rating) for r in rows] == sorted((r.rank_ub, -r.rating) for r in rows)
    assert sum(r.battles for r in rows) == 2 * len(battles)


def test_load_battles_lmarena_jsonl_and_errors(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"model_a": "x", "model_b": "y", "winner": "model_a", "tstamp": 2},
        {"model_a": "x", "model_b": "y", "winner": "both_bad", "tstamp": 1},
        {"model_a": "x", "model_b": "z", "winner": "model_b", "anony": False},
    ]))
    battles = load_battles(path)
    assert [b.winner for b in battles] == ["model_a", "both_bad"]  # non-anonymous rows are not rated
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model_a": "x", "model_b": "y", "winner": "draw"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1: winner 'draw'"):
        load_battles(bad)
    bad.write_text('{"model_a": "x"}\n')
    with pytest.raises(UserError, match="needs model_a, model_b and winner"):
        load_battles(bad)
    bad.write_text("not json\n")
    with pytest.raises(UserError, match="not valid JSON"):
        load_battles(bad)
