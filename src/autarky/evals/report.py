"""`eval report`: one static HTML page (figures inlined as SVG, no external assets) a person would rather look at
than read: leaderboard with CI bars, models × suites matrix, cost–quality Pareto plots per task, the routing table,
arena ratings from paired items, and a per-item drill-down.
"""

from __future__ import annotations

import html
import io
import json
from collections import defaultdict
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the headless backend)
from sqlalchemy import Engine  # noqa: E402

from autarky.evals.results import SuiteScore, leaderboard, load_results, stored_models  # noqa: E402
from autarky.evals.routes import TaskRoute, build_routes, paired_p_values  # noqa: E402
from autarky.evals.stats import ALPHA  # noqa: E402

IN_HOUSE_COLOR, PARTNER_COLOR = "#1b7f5f", "#3b5bdb"


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.find("<svg"):]  # drop the XML prolog so it inlines


def leaderboard_figure(board: list[SuiteScore]) -> str:
    suites = sorted({r.suite for r in board})
    fig, axes = plt.subplots(len(suites), 1, figsize=(7.5, 0.5 + 0.45 * len(board) + 0.5 * len(suites)), squeeze=False)
    for ax, suite in zip(axes[:, 0], suites, strict=True):
        rows = sorted((r for r in board if r.suite == suite), key=lambda r: r.mean)
        ys = range(len(rows))
        colors = [IN_HOUSE_COLOR if r.in_house else PARTNER_COLOR for r in rows]
        ax.barh(ys, [r.mean for r in rows], color=colors, alpha=0.35, height=0.6)
        ax.errorbar([r.mean for r in rows], ys, xerr=[[r.mean - r.ci_low for r in rows], [r.ci_high - r.mean for r in rows]],
                    fmt="o", color="#222", capsize=4, markersize=4)
        ax.set_yticks(list(ys), [r.model for r in rows])
        ax.set_xlim(0, 1)
        ax.set_title(suite, loc="left", fontsize=10, fontweight="bold")
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlabel("mean score (bars), bootstrap 95% CI (whiskers); green = in-house")
    fig.tight_layout()
    return _svg(fig)


def pareto_figure(route: TaskRoute) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for c in route.candidates:
        color = IN_HOUSE_COLOR if c.in_house else PARTNER_COLOR
        ax.errorbar([c.usd_per_1k_tokens], [c.score], yerr=[[c.score - c.ci_low], [c.ci_high - c.score]], fmt="o",
                    color=color, capsize=3)
        ax.annotate(c.model, (c.usd_per_1k_tokens, c.score), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = [c for name in route.pareto for c in route.candidates if c.model == name]
    if len(front) > 1:
        ax.plot([c.usd_per_1k_tokens for c in front], [c.score for c in front], "--", color="#999", zorder=0)
    ax.set_xlabel("USD per 1k tokens")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{route.task}: cost vs quality (dashed: Pareto front)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _svg(fig)


def score_color(score: float) -> str:
    """Red (0) through amber to green (1), light enough to read text on."""
    hue = max(0.0, min(1.0, score)) * 120
    return f"hsl({hue:.0f}, 70%, 85%)"


def _matrix(board: list[SuiteScore]) -> dict[str, Any]:
    models = sorted({r.model for r in board})
    suites = sorted({r.suite for r in board})
    cells = {(r.model, r.suite): r for r in board}
    return {"models": models, "suites": suites, "cells": cells}


def _items(engine: Engine) -> list[dict[str, Any]]:
    """Per suite: items × models with output, score and grader note."""
    by_suite: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    models_by_suite: dict[str, set[str]] = defaultdict(set)
    for row in load_results(engine, ok_only=False):
        item = by_suite[row["suite"]].setdefault(row["item_id"], {"id": row["item_id"], "prompt": row["prompt"], "by_model": {}})
        item["by_model"][row["model"]] = row
        models_by_suite[row["suite"]].add(row["model"])
    return [
        {"suite": suite, "models": sorted(models_by_suite[suite]), "rows": list(items.values())}
        for suite, items in sorted(by_suite.items())
    ]


def _arena(engine: Engine) -> list[Any]:
    from autarky.evals.arena import arena_ratings
    from autarky.evals.battles import battles_from_results

    battles = battles_from_results(engine)
    if not battles or len({b.model_a for b in battles} | {b.model_b for b in battles}) < 2:
        return []
    return arena_ratings(battles, rounds=100)


def render_report(out_dir: str | Path, engine: Engine, prefer_in_house_within: float | None = None,
                  max_usd_per_1k: float | None = None, alpha: float = ALPHA) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard(engine)
    providers = {name: info["provider"] for name, info in stored_models(engine).items()}
    routes = (build_routes(board, providers, prefer_in_house_within, max_usd_per_1k,
                           paired_p_values(engine, board, alpha), alpha) if board else [])
    env = jinja2.Environment(autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
    env.filters["color"] = score_color
    env.filters["tojson_attr"] = lambda v: html.escape(json.dumps(v))
    template = env.from_string(resources.files("autarky.evals").joinpath("report.html.jinja").read_text("utf-8"))
    page = template.render(
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        board=board,
        leaderboard_svg=jinja2.utils.markupsafe.Markup(leaderboard_figure(board)) if board else "",
        matrix=_matrix(board),
        routes=routes,
        pareto_svgs={r.task: jinja2.utils.markupsafe.Markup(pareto_figure(r)) for r in routes},
        arena=_arena(engine),
        item_sections=_items(engine),
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
