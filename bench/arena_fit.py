"""Bradley–Terry fit + 100 bootstrap rounds on 1,000,000 synthetic battles over 50 models:
autarky.evals.arena (Newton on collapsed cells, replicates batched) vs FastChat's published recipe
(`rating_systems.py@0e6d3e4`: pd.factorize + np.unique cells, scipy L-BFGS-B per fit with maxiter 100, gtol 1e-6,
multinomial bootstrap with default_rng(seed=0), one fit per replicate through multiprocessing.Pool(os.cpu_count())).
(`disp: False` is dropped from the options only because SciPy ≥ 1.15 deprecates it; it changes nothing.)

Both start from the same three columns (model_a, model_b, winner as Python strings) in one process run.
Usage: .venv/bin/python bench/arena_fit.py [--battles 1000000] [--models 50] [--rounds 100] [--processes N]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import time
from functools import partial

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from autarky.evals.arena import bootstrap_weights, collapse_columns, fit_bt_batched, to_elo_scale


def synthetic(n_battles: int, n_models: int, seed: int = 42) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    names = [f"model-{i:02d}" for i in range(n_models)]
    strength = rng.normal(0.0, 0.35, n_models)  # log10 units: ratings spread like the public arena (~±140)
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    p = 1 / (1 + 10 ** (strength[b] - strength[a]))
    u = rng.random(n_battles)
    winner = np.where(u < 0.15, "tie", np.where(u < 0.15 + 0.85 * p, "model_a", "model_b")).astype(object)
    winner[(winner == "tie") & (rng.random(n_battles) < 0.3)] = "both_bad"
    return [names[i] for i in a], [names[i] for i in b], winner.tolist()


# ---- FastChat, re-implemented faithfully (pandas + scipy + multiprocessing, as published) ------------------

def fc_preprocess(df: pd.DataFrame):
    n_rows = len(df)
    model_indices, models = pd.factorize(pd.concat([df["model_a"], df["model_b"]]))
    matchups = np.column_stack([model_indices[:n_rows], model_indices[n_rows:]])
    schedule = np.full((n_rows, 3), fill_value=1, dtype=np.int32)
    schedule[:, [0, 1]] = matchups
    schedule[df["winner"] == "model_a", 2] = 2
    schedule[df["winner"] == "model_b", 2] = 0
    matchups_outcomes, weights = np.unique(schedule, return_counts=True, axis=0)
    matchups = matchups_outcomes[:, [0, 1]]
    outcomes = matchups_outcomes[:, 2].astype(np.float64) / 2.0
    return matchups, outcomes, models.to_numpy(), weights.astype(np.float64)


def fc_loss_and_grad(ratings, matchups, outcomes, weights, alpha=1.0):
    matchup_ratings = ratings[matchups]
    logits = alpha * (matchup_ratings[:, 0] - matchup_ratings[:, 1])
    probs = expit(logits)
    loss = -((np.log(probs) * outcomes + np.log(1.0 - probs) * (1.0 - outcomes)) * weights).sum()
    matchups_grads = -alpha * (outcomes - probs) * weights
    model_grad = np.zeros_like(ratings)
    np.add.at(model_grad, matchups[:, [0, 1]], matchups_grads[:, None] * np.array([1.0, -1.0], dtype=np.float64))
    return loss, model_grad


def fc_fit(matchups, outcomes, weights, n_models, alpha, tol=1e-6):
    result = minimize(fun=fc_loss_and_grad, x0=np.zeros(n_models), args=(matchups, outcomes, weights, alpha),
                      jac=True, method="L-BFGS-B", options={"maxiter": 100, "gtol": tol})
    return result["x"]


def fastchat(df: pd.DataFrame, rounds: int, processes: int):
    matchups, outcomes, models, weights = fc_preprocess(df)
    ratings = fc_fit(matchups, outcomes, weights, len(models), math.log(10.0)) * 400 + 1000
    rng = np.random.default_rng(seed=0)
    idxs = rng.multinomial(n=len(df), pvals=weights / weights.sum(), size=rounds)
    boot_weights = idxs.astype(np.float64) / len(df)
    fit = partial(fc_fit, matchups, outcomes, n_models=len(models), alpha=math.log(10.0))
    with mp.Pool(processes) as pool:
        boot = np.array(pool.map(fit, boot_weights)) * 400 + 1000
    return list(models), ratings, np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)


# ---- ours ------------------------------------------------------------------------------------------------

def ours(model_a, model_b, winner, rounds: int):
    cells = collapse_columns(model_a, model_b, winner)
    r = fit_bt_batched(cells, cells.counts[None, :])[0]
    boot = to_elo_scale(fit_bt_batched(cells, bootstrap_weights(cells, rounds), r0=r), cells.models, anchor=False)
    ratings = to_elo_scale(r, cells.models, anchor=False)
    return cells.models, ratings, np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--battles", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    args = parser.parse_args()
    model_a, model_b, winner = synthetic(args.battles, args.models)
    df = pd.DataFrame({"model_a": model_a, "model_b": model_b, "winner": winner})

    start = time.perf_counter()
    models_o, rating_o, low_o, high_o = ours(model_a, model_b, winner, args.rounds)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    models_f, rating_f, low_f, high_f = fastchat(df, args.rounds, args.processes)
    t_fc = time.perf_counter() - start

    assert models_o == models_f, "model order differs"
    print(f"{args.battles:,} battles, {args.models} models, {args.rounds} bootstrap rounds "
          f"({os.cpu_count()} CPUs; FastChat pool of {args.processes})")
    print(f"  ours (Newton, batched replicates): {t_ours:8.3f} s")
    print(f"  FastChat recipe (L-BFGS-B + Pool): {t_fc:8.3f} s")
    print(f"  speed-up: {t_fc / t_ours:.1f}x")
    print(f"  max |rating diff|   = {np.abs(rating_o - rating_f).max():.5f}")
    print(f"  max |CI bound diff| = {max(np.abs(low_o - low_f).max(), np.abs(high_o - high_f).max()):.5f}")
    print(f"  rating range {rating_o.min():.1f} … {rating_o.max():.1f}")


if __name__ == "__main__":
    main()
