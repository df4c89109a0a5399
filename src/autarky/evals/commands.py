"""CLI commands of this stage: `autarky eval run|list|leaderboard|compare|routes|report|arena` (thin shells over
autarky.evals.api). `autarky arena` stays as a hidden alias of `autarky eval arena` for one release.

Every command here that reads or writes the store takes `--store` and `-c/--config` (autarky.clikit's rule).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.table import Table

from autarky.clikit import TableConsole, choose_store, config_option, hidden_alias, store_option
from autarky.errors import UserError

WITHIN_HELP = "prefer an in-house model within this many score points (of 100) of the best"
MAX_USD_HELP = "leave out candidates costing more than this many USD per 1k tokens"
JSON_HELP = "print JSON for programs"
# autarky.evals.stats.ALPHA, spelled out so that `autarky --help` starts without numpy and scipy (a test checks they agree).
ALPHA = 0.05
ALPHA_HELP = ("significance level of the paired test: a challenger moves ahead of the tie-break order only with "
              "p below it")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app."""
    eval_app = typer.Typer(help="Evaluate models on product task suites; leaderboard, routes, report and arena.",
                           no_args_is_help=True)
    app.add_typer(eval_app, name="eval")

    @eval_app.command("run")
    def run(
        model: list[str] = typer.Option(..., "--model", help="NAME=URL of an OpenAI-compatible endpoint (repeat)"),
        suite: list[str] = typer.Option([], "--suite", help="bundled suite name or folder (repeat; default all)"),
        api_key_env: str = typer.Option(None, help="environment variable holding the API key for the endpoints"),
        concurrency: int = typer.Option(4, min=1, help="requests in flight at once"),
        limit: int = typer.Option(None, min=1, help="only the first N items of each suite"),
        price: list[str] = typer.Option([], help="NAME=USD_IN_PER_1M:USD_OUT_PER_1M (repeat)"),
        in_house: list[str] = typer.Option([], help="NAME of a model you serve yourself (repeat)"),
        provider: list[str] = typer.Option([], help="NAME=PROVIDER as the gateway calls it (repeat)"),
        mode: list[str] = typer.Option([], help="NAME=chat|completions (default chat) for generate suites"),
        config: Path = config_option("gateway.toml: prices, in-house flags and providers (explicit flags win); "
                                     "its `store` is used when --store is not given"),
        data_dir: Path = typer.Option(None, help="data dir whose manifest must hold the code-completion files out of train"),
        retries: int = typer.Option(3, min=0, help="retries of a failed request before it counts as an error"),
        timeout: float = typer.Option(300.0, help="seconds to wait for one reply (CPU servers are slow)"),
        fresh: bool = typer.Option(False, help="forget stored results of these models and suites first"),
        max_tokens_cap: int = typer.Option(None, min=1, help="cap every suite's max_tokens (slow CPU demos)"),
        store: str = store_option(),
        gateway_config: Path = typer.Option(None, "--gateway-config", hidden=True, help="old spelling of --config"),
    ) -> None:
        """Run suites against model endpoints; resumes where an interrupted run stopped."""
        from autarky.evals.api import api_key_from_env, evaluate, parse_pairs, print_leaderboard

        config = config or gateway_config
        store = choose_store(store, config)

        summary = evaluate(
            model, suite or None, limit=limit, store_url=store, concurrency=concurrency, in_house=in_house,
            prices=parse_pairs(price, "--price", "NAME=USD_IN_PER_1M:USD_OUT_PER_1M"),
            modes=parse_pairs(mode, "--mode", "NAME=chat or NAME=completions"),
            providers=parse_pairs(provider, "--provider", "NAME=PROVIDER"),
            api_key=api_key_from_env(api_key_env), data_dir=data_dir, fresh=fresh, retries=retries, timeout_s=timeout,
            gateway_config=config, max_tokens_cap=max_tokens_cap,
        )
        typer.echo(f"{summary.done} items graded, {summary.skipped} already in the store, {summary.errors} request "
                   f"errors (retried next run), {summary.grader_failures} grader failures, "
                   f"{summary.requests_sent} requests")
        print_leaderboard(store, TableConsole())

    @eval_app.command("list")
    def list_suites() -> None:
        """The bundled suites."""
        from autarky.evals.suite import bundled_suite_names, load_suite

        for name in bundled_suite_names():
            s = load_suite(name)
            typer.echo(f"{name:18} task={s.config.task:16} kind={s.config.kind:14} grader={s.config.grader:18} "
                       f"items={len(s.items)}" + (f" needs={','.join(s.config.needs)}" if s.config.needs else ""))

    @eval_app.command("leaderboard")
    def show_leaderboard(
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
        store: str = store_option(),
        config: Path = config_option(),
    ) -> None:
        """Per model per suite: mean score with bootstrap 95% CI, p50 latency, cost."""
        from autarky.evals.api import leaderboard_table
        from autarky.evals.results import leaderboard
        from autarky.store.database import open_store

        board = leaderboard(open_store(choose_store(store, config)))
        if as_json:
            typer.echo(json.dumps([asdict(r) for r in board], indent=2))
        else:
            TableConsole().print(leaderboard_table(board))

    @eval_app.command("compare")
    def compare_models(
        model_a: str = typer.Argument(..., help="the first model's name in the store"),
        model_b: str = typer.Argument(..., help="the second model's name in the store"),
        suite: list[str] = typer.Option([], help="suites to compare on (default: every suite both ran)"),
        alpha: float = typer.Option(ALPHA, min=0.0, max=1.0, help=ALPHA_HELP),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
        store: str = store_option(),
        config: Path = config_option(),
    ) -> None:
        """Paired comparison per suite: the difference A − B with its 95% CI and a paired test (McNemar on pass/fail
        items, exact for few discordant items; the paired bootstrap otherwise) with its p-value."""
        from autarky.evals.results import compare, suite_info
        from autarky.store.database import open_store

        engine = open_store(choose_store(store, config))
        names = suite or sorted(suite_info(engine))
        if not names:
            raise UserError("no eval results in the store; run `autarky eval run` first (or pass --store)")
        results = {name: compare(engine, model_a, model_b, name, alpha) for name in names}
        if as_json:
            typer.echo(json.dumps([{"suite": name, "model_a": model_a, "model_b": model_b, **asdict(r)}
                                   for name, r in results.items()], indent=2))
            return
        for name, result in results.items():
            typer.echo(f"{name}: {result.sentence(model_a, model_b)}")

    @eval_app.command("routes")
    def routes(
        out: Path = typer.Option(..., help="where to write routes.toml"),
        prefer_in_house_within: float = typer.Option(None, help=WITHIN_HELP),
        max_usd_per_1k: float = typer.Option(None, help=MAX_USD_HELP),
        alpha: float = typer.Option(ALPHA, min=0.0, max=1.0, help=ALPHA_HELP),
        store: str = store_option(),
        config: Path = config_option(),
    ) -> None:
        """Write the routing table the gateway reads: per task, candidates in tie-break order (in-house, then cost)
        unless a higher score wins a paired test at --alpha, or the in-house margin puts an in-house model first."""
        from autarky.evals.api import routes_from_store, routes_table
        from autarky.evals.routes import write_routes

        table = routes_from_store(choose_store(store, config), prefer_in_house_within, max_usd_per_1k, alpha)
        TableConsole().print(routes_table(table))
        try:
            typer.echo(f"wrote {write_routes(table, out)}")
        except OSError as exc:
            raise UserError(f"--out {out}: cannot write ({exc.strerror or exc})") from None

    @eval_app.command("report")
    def report(
        out: Path = typer.Option(..., help="folder for index.html and its figures"),
        prefer_in_house_within: float = typer.Option(None, help=WITHIN_HELP),
        max_usd_per_1k: float = typer.Option(None, help=MAX_USD_HELP),
        alpha: float = typer.Option(ALPHA, min=0.0, max=1.0, help=ALPHA_HELP),
        store: str = store_option(),
        config: Path = config_option(),
    ) -> None:
        """Write a static HTML report: leaderboard, models × suites, Pareto plots, routing table, items."""
        from autarky.evals.api import write_report

        url = choose_store(store, config)
        try:
            typer.echo(f"wrote {write_report(out, url, prefer_in_house_within, max_usd_per_1k, alpha)}")
        except OSError as exc:  # a file where the folder should be, a read-only disk, no permission
            raise UserError(f"--out {out}: cannot write the report ({exc.strerror or exc})") from None

    def arena(
        battles: Path = typer.Option(None, help="battles JSONL (LMArena format: model_a, model_b, winner)"),
        from_results: bool = typer.Option(False, help="battles from paired graded items in the store"),
        judge_url: str = typer.Option(None, help="OpenAI-compatible URL of the judge (e.g. the gateway's /v1)"),
        judge_model: str = typer.Option(None, help="model name of the judge"),
        suite: str = typer.Option(None, help="suite whose outputs the judge compares"),
        api_key_env: str = typer.Option(None, help="environment variable holding the judge's API key"),
        category: str = typer.Option(None, help="rate only battles of this category (product task)"),
        rounds: int = typer.Option(100, min=0, help="bootstrap rounds"),
        save_battles: Path = typer.Option(None, help="also write the battles used to this JSONL file"),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
        store: str = store_option(),
        config: Path = config_option(),
    ) -> None:
        """Bradley–Terry ratings with bootstrap CIs and Rank (UB), beside online Elo."""
        from autarky.evals.api import api_key_from_env
        from autarky.evals.arena import arena_ratings
        from autarky.evals.battles import battles_from_results, judge_battles, load_battles, write_battles
        from autarky.store.database import open_store

        store = choose_store(store, config)
        rows = []
        if battles is not None:
            rows += load_battles(battles)
        if from_results:
            rows += battles_from_results(open_store(store))
        if judge_url or judge_model:
            if not (judge_url and judge_model and suite):
                raise UserError("an LLM judge needs --judge-url, --judge-model and --suite")
            rows += judge_battles(open_store(store), suite, judge_url, judge_model, api_key_from_env(api_key_env))
        if battles is None and not from_results and not judge_url:
            raise UserError("no battles: give --battles FILE.jsonl, --from-results, or --judge-url/--judge-model/--suite")
        if category:
            rows = [b for b in rows if b.category == category]
        if not rows:
            raise UserError("no battles to rate (check --category and that the store has results)")
        if save_battles:
            write_battles(rows, save_battles)
        ratings = arena_ratings(rows, rounds=rounds)
        if as_json:
            typer.echo(json.dumps([asdict(r) for r in ratings], indent=2))
            return
        table = Table(title=f"arena: Bradley–Terry ({len(rows)} battles, {rounds} bootstrap rounds)")
        for column in ("Rank (UB)", "model", "rating", "95% CI", "online Elo", "battles"):
            table.add_column(column)
        for r in ratings:
            table.add_row(str(r.rank_ub), r.model, f"{r.rating:.1f}",
                          f"+{round(r.ci_high - r.rating)}/-{round(r.rating - r.ci_low)}", f"{r.elo_online:.1f}",
                          str(r.battles))
        TableConsole().print(table)

    eval_app.command("arena")(arena)
    hidden_alias(app, "arena", arena, "eval arena")
