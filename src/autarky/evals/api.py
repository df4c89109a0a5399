"""The eval stage's Python API (the CLI and `autarky demo` call these): run suites against NAME=URL endpoints,
show the leaderboard, write the routing table and the HTML report.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autarky.contracts.catalog import read_catalog
from autarky.errors import UserError
from autarky.evals.client import Endpoint, parse_model_spec
from autarky.evals.results import SuiteScore, leaderboard, stored_models
from autarky.evals.routes import TaskRoute, build_routes, paired_p_values, write_routes
from autarky.evals.runner import EvalModel, EvalRunSummary, RunOptions, run_eval
from autarky.evals.stats import ALPHA
from autarky.evals.suite import Suite, bundled_suite_names, load_suite
from autarky.store.database import open_store


def parse_pairs(values: Iterable[str], option: str, example: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UserError(f"bad {option} {value!r}; write {example}")
        out[name.strip()] = rest.strip()
    return out


def parse_price(value: str) -> tuple[float, float]:
    try:
        usd_in, _, usd_out = value.partition(":")
        return float(usd_in), float(usd_out or usd_in)
    except ValueError:
        raise UserError(f"bad price {value!r}; write USD_IN_PER_1M:USD_OUT_PER_1M, e.g. 0.15:0.60") from None


def model_specs(models: dict[str, str] | Iterable[str], *, in_house: Iterable[str] = (),
                prices: dict[str, str] | None = None, modes: dict[str, str] | None = None,
                providers: dict[str, str] | None = None, api_key: str = "",
                api_keys: dict[str, str] | None = None) -> list[EvalModel]:
    """Endpoints from {NAME: URL} (or "NAME=URL" strings) plus per-model price, mode, provider and key."""
    pairs = dict(models) if isinstance(models, dict) else dict(parse_model_spec(s) for s in models)
    prices, modes, providers, api_keys = prices or {}, modes or {}, providers or {}, api_keys or {}
    in_house = set(in_house)
    for option, names in (("--price", prices), ("--mode", modes), ("--in-house", {n: n for n in in_house}),
                          ("--provider", providers)):
        unknown = set(names) - set(pairs)
        if unknown:
            raise UserError(f"{option} names {', '.join(sorted(unknown))}, which is not a --model; use a NAME given to --model")
    specs = []
    for name, url in pairs.items():
        mode = modes.get(name, "chat")
        if mode not in ("chat", "completions"):
            raise UserError(f"bad --mode {name}={mode}; use chat or completions")
        usd_in, usd_out = parse_price(prices[name]) if name in prices else (0.0, 0.0)
        endpoint = Endpoint(name, url.rstrip("/"), api_keys.get(name, api_key), mode)  # type: ignore[arg-type]
        specs.append(EvalModel(endpoint, usd_in, usd_out, name in in_house, providers.get(name, "")))
    return specs


def gateway_defaults(path: str | Path, names: Iterable[str]) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """Prices, in-house flags and providers of `names` as a gateway.toml declares them (explicit flags win)."""
    catalog = read_catalog(path)
    prices, in_house, providers = {}, set(), {}
    for name in names:
        entry = catalog.get(name)
        if entry is None:
            continue
        prices[name] = f"{entry.usd_per_1m_input}:{entry.usd_per_1m_output}"
        providers[name] = entry.provider
        if entry.in_house:
            in_house.add(name)
    return prices, in_house, providers


def api_key_from_env(var: str | None) -> str:
    if not var:
        return ""
    value = os.environ.get(var)
    if value is None:
        raise UserError(f"--api-key-env {var}: the environment variable {var} is not set")
    return value


def load_suites(refs: Iterable[str] | None) -> list[Suite]:
    refs = list(refs or []) or bundled_suite_names()
    suites = [load_suite(ref) for ref in refs]
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise UserError(f"two suites share a name in {names}; suite names must be unique")
    return suites


def evaluate(models: dict[str, str] | Iterable[str], suites: Iterable[str] | None = None, *, limit: int | None = None,
             store_url: str | None = None, concurrency: int = 4, in_house: Iterable[str] = (),
             prices: dict[str, str] | None = None, modes: dict[str, str] | None = None, api_key: str = "",
             providers: dict[str, str] | None = None, data_dir: str | Path | None = None, progress: bool = True,
             fresh: bool = False, retries: int = 3, timeout_s: float = 300.0,
             gateway_config: str | Path | None = None, max_tokens_cap: int | None = None) -> EvalRunSummary:
    """Run `suites` (default: every bundled suite) against `models` ({NAME: URL}); results go to the store.
    Prices, in-house flags and providers come from the arguments, else from `gateway_config` (a gateway.toml)."""
    loaded = load_suites(suites)
    if data_dir is not None:
        from autarky.evals.generators.code_completion import check_held_out

        for suite in loaded:
            if suite.config.grader == "code-completion":
                check_held_out(suite.items, data_dir)
    if gateway_config is not None:
        names = list(models) if isinstance(models, dict) else [parse_model_spec(m)[0] for m in models]
        g_prices, g_in_house, g_providers = gateway_defaults(gateway_config, names)
        prices, providers = {**g_prices, **(prices or {})}, {**g_providers, **(providers or {})}
        in_house = set(in_house) | g_in_house
    specs = model_specs(models, in_house=in_house, prices=prices, modes=modes, providers=providers, api_key=api_key)
    options = RunOptions(concurrency=concurrency, limit=limit, retries=retries, timeout_s=timeout_s, fresh=fresh,
                         progress=progress, max_tokens_cap=max_tokens_cap)
    return run_eval(loaded, specs, store_url, options)


def leaderboard_table(board: list[SuiteScore]) -> Table:
    table = Table(title="eval leaderboard (mean score, bootstrap 95% CI; format valid: share of outputs in the "
                        "requested format)")
    numeric = ("n", "score", "format valid", "p50 ms", "$/1k tok")
    for column in ("suite", "model", "n", "score", "95% CI", "format valid", "p50 ms", "$/1k tok", "in-house", "notes"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for row in board:
        notes = ", ".join(f"{k}={v:.3f}" for k, v in row.extra.items())
        if row.failures:
            notes = ", ".join(filter(None, [notes, f"{row.failures} failed"]))
        table.add_row(row.suite, row.model, str(row.n), f"{row.mean:.3f}", f"[{row.ci_low:.3f}, {row.ci_high:.3f}]",
                      "-" if row.format_valid is None else f"{row.format_valid:.3f}", f"{row.p50_latency_ms:.0f}", f"{row.usd_per_1k_tokens:.4f}", "yes" if row.in_house else "",
                      notes)
    return table


def print_leaderboard(store_url: str | None = None, console: Console | None = None) -> list[SuiteScore]:
    board = leaderboard(open_store(store_url))
    (console or Console()).print(leaderboard_table(board))
    return board


def routes_from_store(store_url: str | None = None, prefer_in_house_within: float | None = None,
                      max_usd_per_1k: float | None = None, alpha: float = ALPHA) -> list[TaskRoute]:
    """The routing table from the store's results, ordered by the rule of autarky.evals.routes at `alpha`."""
    engine = open_store(store_url)
    board = leaderboard(engine)
    if not board:
        raise UserError("no eval results in the store; run `autarky eval run` first (or pass --store)")
    providers = {name: info["provider"] for name, info in stored_models(engine).items()}
    return build_routes(board, providers, prefer_in_house_within, max_usd_per_1k, paired_p_values(engine, board, alpha),
                        alpha)


def write_routes_file(out: str | Path, store_url: str | None = None, prefer_in_house_within: float | None = None,
                      max_usd_per_1k: float | None = None, alpha: float = ALPHA) -> Path:
    return write_routes(routes_from_store(store_url, prefer_in_house_within, max_usd_per_1k, alpha), out)


def routes_table(routes: list[TaskRoute]) -> Table:
    table = Table(title="routing table (first candidate serves the task)")
    for column in ("task", "rank", "model", "score", "95% CI", "$/1k tok", "p50 ms", "p vs next", "in-house", "pareto",
                   "why first"):
        table.add_column(column)
    for route in routes:
        for i, c in enumerate(route.candidates, start=1):
            table.add_row(route.task if i == 1 else "", str(i), c.model, f"{c.score:.3f}",
                          f"[{c.ci_low:.3f}, {c.ci_high:.3f}]", f"{c.usd_per_1k_tokens:.4f}", f"{c.p50_latency_ms:.0f}",
                          "" if c.p_vs_next is None else f"{c.p_vs_next:.3g}", "yes" if c.in_house else "",
                          "yes" if c.model in route.pareto else "", (c.reason or "") if i == 1 else "")
    return table


def write_report(out_dir: str | Path, store_url: str | None = None, prefer_in_house_within: float | None = None,
                 max_usd_per_1k: float | None = None, alpha: float = ALPHA) -> Path:
    from autarky.evals.report import render_report

    return render_report(out_dir, open_store(store_url), prefer_in_house_within, max_usd_per_1k, alpha)


def demo_eval(models: dict[str, str], out_dir: str | Path, *, in_house: Iterable[str] = (), limit: int | None = 20,
              store_url: str | None = None, suites: Iterable[str] | None = None, concurrency: int = 2,
              modes: dict[str, str] | None = None, prefer_in_house_within: float | None = 5.0,
              max_tokens_cap: int | None = None, timeout_s: float = 600.0,
              console: Console | None = None) -> dict[str, Path]:
    """The demo's eval step: run, print the leaderboard and routing table, write routes.toml and the report.
    `max_tokens_cap` bounds generation for slow CPU demos (it can cost models points on long answers)."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = evaluate(models, suites, limit=limit, store_url=store_url, concurrency=concurrency, in_house=in_house,
                       modes=modes, max_tokens_cap=max_tokens_cap, timeout_s=timeout_s)
    console.print(f"eval: {summary.done} items graded, {summary.skipped} already done, {summary.errors} request errors, "
                  f"{summary.grader_failures} grader failures")
    print_leaderboard(store_url, console)
    routes = routes_from_store(store_url, prefer_in_house_within)
    console.print(routes_table(routes))
    routes_path = write_routes(routes, out / "routes.toml")
    report = write_report(out / "report", store_url, prefer_in_house_within)
    console.print(f"routing table: {routes_path}\nreport: {report}")
    return {"routes": routes_path, "report": report}
