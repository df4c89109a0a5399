"""Arena ratings exactly as LMArena/FastChat compute them (see shared/reference/arena.md):

- Bradley–Terry MLE: P(A beats B) = 1 / (1 + 10^((R_B − R_A)/400)); no regularisation, no intercept; ties count
  half a win and half a loss; ratings start at 0 so they keep mean 0, then R = 400·r + 1000 (shifted so that
  mixtral-8x7b-instruct-v0.1 = 1114 if that model is present, as FastChat does).
- 95% CIs: multinomial bootstrap over the unique (a, b, outcome) counts, rng = default_rng(seed=0), 100 rounds;
  the point rating is the full-data fit; bounds are the 2.5% / 97.5% quantiles.
- Rank (UB): 1 + #{m' : q025[m'] > q975[m]}; rows sorted by (rank, −rating).
- Online Elo (K=4) beside it, in battle order.

The optimum is the same as FastChat's L-BFGS-B; we reach it with Newton's method on the collapsed cells (the
exact Hessian is a weighted graph Laplacian), all bootstrap replicates batched, warm-started from the full fit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, log_expit

from autarky.evals.battles import Battle

LN10 = math.log(10.0)
SCALE, INIT_RATING = 400.0, 1000.0
ANCHOR_MODEL, ANCHOR_RATING = "mixtral-8x7b-instruct-v0.1", 1114.0
OUTCOME = {"model_a": 2, "model_b": 0, "tie": 1, "both_bad": 1, "tie (bothbad)": 1}  # y = code / 2


@dataclass(frozen=True)
class Cells:
    """Battles collapsed to unique (a, b, outcome) cells with counts."""

    models: list[str]
    a: np.ndarray  # (k,) int
    b: np.ndarray
    y: np.ndarray  # (k,) float in {0, 0.5, 1}
    counts: np.ndarray  # (k,) float
    n_battles: int


def collapse(battles: list[Battle]) -> Cells:
    if not battles:
        raise ValueError("no battles to rate")
    return collapse_columns([b.model_a for b in battles], [b.model_b for b in battles], [b.winner for b in battles])


def collapse_columns(model_a: Sequence[str], model_b: Sequence[str], winner: Sequence[str]) -> Cells:
    """Columns of battles → unique cells. Model ids in order of first appearance in model_a then model_b (what
    pd.factorize(concat(a, b)) gives FastChat), so cells come in FastChat's order and bootstrap draws match."""
    # dict.fromkeys and map(dict.__getitem__) run in C: about 0.1 s per million rows, with no pandas.
    index = {m: i for i, m in enumerate(dict.fromkeys(itertools.chain(model_a, model_b)))}
    ids_a = np.fromiter(map(index.__getitem__, model_a), dtype=np.int64, count=len(model_a))
    ids_b = np.fromiter(map(index.__getitem__, model_b), dtype=np.int64, count=len(model_b))
    code = np.fromiter(map(OUTCOME.__getitem__, winner), dtype=np.int64, count=len(winner))
    n = len(index)
    return cells_from_keys(list(index), (ids_a * n + ids_b) * 3 + code)


def cells_from_keys(models: list[str], key: np.ndarray) -> Cells:
    """`key = (a·n + b)·3 + outcome_code`; counting with bincount is what makes 10^6 battles cheap."""
    n = len(models)
    counts = np.bincount(key, minlength=n * n * 3)
    cells = np.flatnonzero(counts)
    return Cells(models, cells // 3 // n, cells // 3 % n, (cells % 3) / 2.0, counts[cells].astype(np.float64),
                 int(key.size))


def pair_tables(cells: Cells, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate, `wins[i, j]` = weight of i beating j (ties half each way, both seatings summed) and
    `games[i, j] = wins[i, j] + wins[j, i]`. The BT likelihood depends on the data only through these."""
    w = np.atleast_2d(weights).astype(np.float64)
    reps, n = w.shape[0], len(cells.models)
    base = np.repeat(np.arange(reps) * n * n, cells.a.size)
    ab, ba = base + np.tile(cells.a * n + cells.b, reps), base + np.tile(cells.b * n + cells.a, reps)
    wins = (np.bincount(ab, (w * cells.y).ravel(), reps * n * n)
            + np.bincount(ba, (w * (1 - cells.y)).ravel(), reps * n * n)).reshape(reps, n, n)
    return wins, wins + wins.transpose(0, 2, 1)


def _nll(r: np.ndarray, wins: np.ndarray) -> np.ndarray:
    return -(wins * log_expit(LN10 * (r[:, :, None] - r[:, None, :]))).sum(axis=(1, 2))


def fit_bt_batched(cells: Cells, weights: np.ndarray, r0: np.ndarray | None = None, max_iter: int = 100,
                   tol: float = 1e-10) -> np.ndarray:
    """Newton's method for R independent BT fits sharing the cells; weights (R, k) → r (R, n), log10 units, mean 0.

    Works on dense (R, n, n) pair tables, so a step costs O(R·n²) whatever the number of battles. Each step solves
    (H + c·11ᵀ/n + εI) δ = −g: H (a weighted graph Laplacian) is singular along 1 but g ⟂ 1, so δ has mean 0
    and the ratings keep the mean-0 normalisation that FastChat's zero start gives. Steps that do not lower the
    loss are halved (the BT log-likelihood is concave, so this only matters far from the optimum).
    """
    wins, games = pair_tables(cells, weights)
    reps, n = wins.shape[0], wins.shape[1]
    r = np.zeros((reps, n)) if r0 is None else np.array(np.broadcast_to(r0, (reps, n)), dtype=np.float64)
    loss = _nll(r, wins)
    active = np.ones(reps, dtype=bool)
    eye = np.eye(n)
    for _ in range(max_iter):
        p = expit(LN10 * (r[:, :, None] - r[:, None, :]))  # p[i, j] = P(i beats j)
        grad = LN10 * (games * p - wins).sum(axis=2)
        off = LN10**2 * games * p * (1 - p)
        hess = off.sum(axis=2)[:, :, None] * eye - off
        c = np.maximum(np.trace(hess, axis1=1, axis2=2) / n, 1e-300)[:, None, None]
        hess += c / n + 1e-12 * c * eye
        step = -np.linalg.solve(hess, grad[..., None])[..., 0]
        step[~active] = 0.0
        scale = np.ones(reps)
        trial = _nll(r + step, wins)
        for _halving in range(40):
            worse = (trial > loss + 1e-12 * np.abs(loss)) & active
            if not worse.any():
                break
            scale[worse] *= 0.5
            trial[worse] = _nll(r[worse] + scale[worse, None] * step[worse], wins[worse])
        r = r + scale[:, None] * step
        loss = trial
        active &= np.abs(scale[:, None] * step).max(axis=1) > tol
        if not active.any():
            break
    return r - r.mean(axis=1, keepdims=True)


def to_elo_scale(r: np.ndarray, models: list[str], anchor: bool = True) -> np.ndarray:
    ratings = SCALE * r + INIT_RATING
    if anchor and ANCHOR_MODEL in models:
        ratings = ratings + (ANCHOR_RATING - ratings[..., models.index(ANCHOR_MODEL)])[..., None]
    return ratings


def bootstrap_weights(cells: Cells, rounds: int = 100, seed: int = 0) -> np.ndarray:
    """FastChat's multinomial resampling of the unique-outcome counts, normalised by the battle count."""
    rng = np.random.default_rng(seed=seed)
    draws = rng.multinomial(n=cells.n_battles, pvals=cells.counts / cells.counts.sum(), size=rounds)
    return draws.astype(np.float64) / cells.n_battles


def rank_ub(q025: np.ndarray, q975: np.ndarray) -> np.ndarray:
    """1 + the number of models whose lower bound exceeds this model's upper bound."""
    return 1 + (q025[None, :] > q975[:, None]).sum(axis=1)


def online_elo(battles: list[Battle], k: float = 4.0, base: float = 10.0, scale: float = SCALE,
               init: float = INIT_RATING) -> dict[str, float]:
    """FastChat `compute_elo`: one pass in the given order (sort by tstamp first if you have one)."""
    ratings: dict[str, float] = {}
    for bt in battles:
        ra, rb = ratings.setdefault(bt.model_a, init), ratings.setdefault(bt.model_b, init)
        expected_a = 1 / (1 + base ** ((rb - ra) / scale))
        delta = k * (OUTCOME[bt.winner] / 2 - expected_a)
        ratings[bt.model_a], ratings[bt.model_b] = ra + delta, rb - delta
    return ratings


@dataclass(frozen=True)
class ArenaRow:
    model: str
    rating: float
    ci_low: float
    ci_high: float
    rank_ub: int
    elo_online: float
    battles: int


def arena_ratings(battles: list[Battle], rounds: int = 100, seed: int = 0, anchor: bool = True) -> list[ArenaRow]:
    """The leaderboard: BT rating, bootstrap 95% CI, Rank (UB) and online Elo, sorted by (rank, −rating)."""
    cells = collapse(battles)
    r = fit_bt_batched(cells, cells.counts[None, :])[0]
    ratings = to_elo_scale(r, cells.models, anchor)
    if rounds > 0:
        boot = to_elo_scale(fit_bt_batched(cells, bootstrap_weights(cells, rounds, seed), r0=r), cells.models, anchor)
        q025, q975 = np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)
    else:
        q025 = q975 = ratings
    ranks = rank_ub(q025, q975)
    ordered = sorted(battles, key=lambda b: b.tstamp) if all(b.tstamp is not None for b in battles) else battles
    elo = online_elo(ordered)
    appearances: dict[str, int] = {}
    for bt in battles:
        appearances[bt.model_a] = appearances.get(bt.model_a, 0) + 1
        appearances[bt.model_b] = appearances.get(bt.model_b, 0) + 1
    rows = [
        ArenaRow(m, float(ratings[i]), float(q025[i]), float(q975[i]), int(ranks[i]), elo[m], appearances[m])
        for i, m in enumerate(cells.models)
    ]
    return sorted(rows, key=lambda row: (row.rank_ub, -row.rating))
