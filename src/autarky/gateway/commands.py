"""CLI commands of this stage: thin shells over the package API."""

from __future__ import annotations

from pathlib import Path

import typer


def _store_url(config: Path | None, store: str | None) -> str | None:
    if store:
        return store
    if config:
        from autarky.gateway.config import load_config

        return load_config(config).store
    return None  # the default store under AUTARKY_HOME


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app."""
    config_opt = typer.Option(None, "--config", "-c", help="gateway.toml (its `store` is used)")
    store_opt = typer.Option(None, "--store", help="SQLAlchemy URL; overrides the config's store")

    @app.command("gateway")
    def gateway(
        config: Path = typer.Option(..., "--config", "-c", help="gateway.toml (see examples/gateway.toml)"),
        host: str = typer.Option("127.0.0.1", help="interface to bind"),
        port: int = typer.Option(4000, help="port to listen on"),
        log_level: str = typer.Option("warning", help="uvicorn log level"),
    ) -> None:
        """One OpenAI/Anthropic-compatible endpoint routing every product task by policy, score and cost."""
        from autarky.gateway.config import load_config
        from autarky.gateway.server import run_gateway

        cfg = load_config(config)
        typer.echo(f"autarky gateway: {len(cfg.models)} models, {len(cfg.tasks)} tasks on http://{host}:{port}/v1 "
                   f"(store {cfg.store.split('@')[-1]}); Ctrl-C drains and flushes the ledger", err=True)
        run_gateway(cfg, host, port, log_level)

    keys = typer.Typer(help="Virtual API keys for the gateway (stored only as hashes).", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("create")
    def keys_create(
        team: str = typer.Option(..., "--team", help="the team whose policy the key carries"),
        budget_usd: float | None = typer.Option(None, "--budget-usd", help="spend limit in USD"),
        rpm: int | None = typer.Option(None, "--rpm", help="requests per minute"),
        tpm: int | None = typer.Option(None, "--tpm", help="tokens per minute"),
        models: list[str] | None = typer.Option(None, "--models", help="allowed models (repeat, or a,b,c)"),
        config: Path | None = config_opt,
        store: str | None = store_opt,
    ) -> None:
        """Create a key; it is printed once and never stored in clear."""
        from autarky.gateway.auth import create_key
        from autarky.store.database import open_store

        names = [m.strip() for value in models or () for m in value.split(",") if m.strip()]
        key, record = create_key(open_store(_store_url(config, store)), team, budget_usd=budget_usd, rpm=rpm,
                                 tpm=tpm, models=names or None)
        typer.echo(key)
        typer.echo(f"id={record.id} team={team} (save the key now: it cannot be shown again)", err=True)

    @keys.command("list")
    def keys_list(config: Path | None = config_opt, store: str | None = store_opt) -> None:
        """List keys (ids, prefixes, limits, spend)."""
        from autarky.gateway.auth import list_keys
        from autarky.store.database import open_store

        # Plain tab-separated lines: easy to read and to grep or cut in scripts.
        typer.echo("\t".join(("id", "prefix", "team", "budget_usd", "spent_usd", "rpm", "tpm", "models", "status")))
        for k in list_keys(open_store(_store_url(config, store))):
            typer.echo("\t".join((k["id"], k["prefix"] + "...", k["team"], _num(k["budget_usd"]),
                                  f"{k['spent_usd']:.6f}", _num(k["rpm"]), _num(k["tpm"]),
                                  ",".join(k["models"] or ["*"]), "revoked" if k["revoked"] else "active")))

    @keys.command("revoke")
    def keys_revoke(key_id: str = typer.Argument(..., help="the key id from `autarky keys list`"),
                    config: Path | None = config_opt, store: str | None = store_opt) -> None:
        """Revoke a key (gateways stop accepting it within their key-cache TTL)."""
        from autarky.gateway.auth import revoke_key
        from autarky.store.database import open_store

        revoke_key(open_store(_store_url(config, store)), key_id)
        typer.echo(f"revoked {key_id}")

    audit_app = typer.Typer(help="The gateway's hash-chained audit log.", no_args_is_help=True)
    app.add_typer(audit_app, name="audit")

    @audit_app.command("verify")
    def audit_verify(config: Path | None = config_opt, store: str | None = store_opt) -> None:
        """Check the audit chain; exits 1 and lists each edited, inserted or deleted row."""
        from autarky.gateway.audit import verify
        from autarky.store.database import open_store

        rows, problems = verify(open_store(_store_url(config, store)))
        if problems:
            for p in problems:
                typer.echo(f"TAMPERED {p}")
            typer.echo(f"audit chain BROKEN: {len(problems)} problem(s) in {rows} rows")
            raise typer.Exit(1)
        typer.echo(f"audit chain OK: {rows} rows")


def _num(value: float | int | None) -> str:
    return "-" if value is None else str(value)



