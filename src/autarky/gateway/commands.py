"""CLI commands of this stage: `autarky gateway`, `keys`, `audit` and `usage` (thin shells over the package API)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from autarky.clikit import choose_store, config_option, store_option

USAGE_BY_HELP = "group by team, key, model and/or provider (repeat, or a,b; default: totals only)"
USAGE_SINCE_HELP = ("window start: a duration back from now (90m, 24h, 7d, 2w) or an ISO date/time, UTC unless it "
                    "has an offset (default: all time)")
USAGE_IN_HOUSE_HELP = "a PROVIDER on your own hardware (repeat), besides those --config marks in_house = true"

if TYPE_CHECKING:
    from autarky.gateway.usage import UsageReport, UsageRow


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app. Each command that touches the store takes `--store` and
    `-c/--config` (autarky.clikit's rule: --store, else the config's store, else AUTARKY_HOME's SQLite)."""

    @app.command("gateway")
    def gateway(
        config: Path = typer.Option(..., "--config", "-c", help="gateway.toml (see examples/gateway.toml)"),
        host: str = typer.Option("127.0.0.1", help="interface to bind"),
        port: int = typer.Option(4000, help="port to listen on"),
        log_level: str = typer.Option("warning", help="uvicorn log level"),
        store: str | None = store_option(),
    ) -> None:
        """One OpenAI/Anthropic-compatible endpoint routing every product task by policy, score and cost."""
        from autarky.gateway.config import load_config
        from autarky.gateway.server import run_gateway

        cfg = load_config(config)
        if store:  # --store wins over the config's store, as everywhere
            cfg = cfg.model_copy(update={"store": store})

        def banner() -> None:  # once it serves: a start-up error is the only line, never after a banner
            typer.echo(f"autarky gateway: {len(cfg.models)} models, {len(cfg.tasks)} tasks on http://{host}:{port}/v1"
                       f" (store {cfg.store.split('@')[-1]}); Ctrl-C drains and flushes the ledger", err=True)

        run_gateway(cfg, host, port, log_level, on_started=banner)

    keys = typer.Typer(help="Virtual API keys for the gateway (stored only as hashes).", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("create")
    def keys_create(
        team: str = typer.Option(..., "--team", help="the team whose policy the key carries"),
        budget_usd: float | None = typer.Option(None, "--budget-usd", help="spend limit in USD"),
        rpm: int | None = typer.Option(None, "--rpm", help="requests per minute"),
        tpm: int | None = typer.Option(None, "--tpm", help="tokens per minute"),
        models: list[str] | None = typer.Option(None, "--models", help="allowed models (repeat, or a,b,c)"),
        config: Path | None = config_option(),
        store: str | None = store_option(),
    ) -> None:
        """Create a key; it is printed once and never stored in clear."""
        from autarky.gateway.auth import create_key
        from autarky.store.database import open_store

        names = [m.strip() for value in models or () for m in value.split(",") if m.strip()]
        teams = None
        if config is not None:  # with a config, the key's team must be one of its [teams] (when it lists any)
            from autarky.gateway.config import load_config

            teams = set(load_config(config).teams) or None
        key, record = create_key(open_store(choose_store(store, config)), team, budget_usd=budget_usd, rpm=rpm,
                                 tpm=tpm, models=names or None, teams=teams)
        typer.echo(key)
        typer.echo(f"id={record.id} team={team} (save the key now: it cannot be shown again)", err=True)

    @keys.command("list")
    def keys_list(config: Path | None = config_option(), store: str | None = store_option()) -> None:
        """List keys (ids, prefixes, limits, spend)."""
        from autarky.gateway.auth import list_keys
        from autarky.store.database import open_store

        records = list_keys(open_store(choose_store(store, config)))  # before any output: an error is the only line
        # Plain tab-separated lines: easy to read and to grep or cut in scripts.
        typer.echo("\t".join(("id", "prefix", "team", "budget_usd", "spent_usd", "rpm", "tpm", "models", "status")))
        for k in records:
            typer.echo("\t".join((k["id"], k["prefix"] + "...", str(k["team"]), _num(k["budget_usd"]),
                                  f"{k['spent_usd'] or 0.0:.6f}", _num(k["rpm"]), _num(k["tpm"]),
                                  ",".join(k["models"] or ["*"]), "revoked" if k["revoked"] else "active")))

    @keys.command("revoke")
    def keys_revoke(key_id: str = typer.Argument(..., help="the key id from `autarky keys list`"),
                    config: Path | None = config_option(), store: str | None = store_option()) -> None:
        """Revoke a key (gateways stop accepting it within their key-cache TTL)."""
        from autarky.gateway.auth import revoke_key
        from autarky.store.database import open_store

        revoke_key(open_store(choose_store(store, config)), key_id)
        typer.echo(f"revoked {key_id}")

    audit_app = typer.Typer(help="The gateway's hash-chained audit log.", no_args_is_help=True)
    app.add_typer(audit_app, name="audit")

    @audit_app.command("verify")
    def audit_verify(config: Path | None = config_option(), store: str | None = store_option()) -> None:
        """Check the audit chain; exits 1 and lists each edited, inserted or deleted row."""
        from autarky.gateway.audit import verify
        from autarky.store.database import open_store

        rows, problems = verify(open_store(choose_store(store, config)))
        if problems:
            for p in problems:
                typer.echo(f"TAMPERED {p}")
            typer.echo(f"audit chain BROKEN: {len(problems)} problem(s) in {rows} rows")
            raise typer.Exit(1)
        typer.echo(f"audit chain OK: {rows} rows")

    @app.command("usage")
    def usage(
        by: list[str] = typer.Option([], "--by", metavar="GROUP", help=USAGE_BY_HELP),
        since: str | None = typer.Option(None, "--since", metavar="WHEN", help=USAGE_SINCE_HELP),
        until: str | None = typer.Option(None, "--until", metavar="WHEN",
                                         help="window end, exclusive, in the same forms (default: now)"),
        in_house: list[str] = typer.Option([], "--in-house", metavar="PROVIDER", help=USAGE_IN_HOUSE_HELP),
        as_json: bool = typer.Option(False, "--json", help="print JSON for programs (stable keys)"),
        config: Path | None = config_option("gateway.toml: its store (unless --store) and its in-house providers"),
        store: str | None = store_option(),
    ) -> None:
        """Spend and tokens by team, key, model or provider over a time window, with the in-house share."""
        import json
        import time

        from autarky.gateway.usage import in_house_providers, parse_when, usage_report
        from autarky.store.database import open_store

        now = time.time()
        start = parse_when(since, now, "--since") if since else None
        end = parse_when(until, now, "--until") if until else None
        groups = [g.strip() for value in by for g in value.split(",") if g.strip()]
        known: set[str] | None = set(in_house) or None
        if config is not None:
            from autarky.gateway.config import load_config

            known = (known or set()) | in_house_providers(load_config(config))
        report = usage_report(open_store(choose_store(store, config)), groups, start, end, known)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
            return
        _print_usage(report)


def _num(value: float | int | None) -> str:
    return "-" if value is None else str(value)


def _print_usage(report: UsageReport) -> None:
    from rich.table import Table

    from autarky.clikit import TableConsole

    window = report.to_dict()
    table = Table(title=f"gateway usage, {window['since'] or 'first request'} → {window['until'] or 'now'}")
    for column in (*report.by, "requests", "errors", "prompt tok", "completion tok", "USD", "in-house"):
        table.add_column(column, justify="left" if column in report.by else "right")
    for row in report.rows:
        table.add_row(*("-" if v is None else v for v in row.group.values()), *_sums(row))
    if report.rows:
        table.add_section()
    table.add_row(*["total", *[""] * len(report.by)][: len(report.by)], *_sums(report.total))
    TableConsole().print(table)


def _sums(row: UsageRow) -> list[str]:
    share = "-" if row.in_house_share is None else f"{row.in_house_share:.1%}"
    return [f"{row.requests:,}", f"{row.errors:,}", f"{row.prompt_tokens:,}", f"{row.completion_tokens:,}",
            f"{row.cost_usd:.4f}", share]
