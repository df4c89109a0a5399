"""`autarky data build` and `autarky data verify`: thin shells over autarky.data."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from autarky.clikit import TableConsole, field_option
from autarky.data.config import DataConfig


def _summary(manifest: dict, out: Path) -> Table:
    table = Table(title=f"data dir {out}", show_header=False)
    prov = manifest.get("provenance", {})
    table.add_row("source", f"{prov.get('source_kind', '?')}: {prov.get('source_root', '?')}")
    for split, info in manifest["splits"].items():
        table.add_row(
            split, f"{info['documents']:,} documents, {info['text_bytes']:,} bytes, {info['tokens']:,} tokens"
        )
    table.add_row("vocab", f"{manifest['vocab_size']:,} ({manifest['dtype']})")
    if prov.get("duplicates_removed"):
        table.add_row("duplicates removed", str(prov["duplicates_removed"]))
    if prov.get("skipped_not_utf8"):
        table.add_row("skipped (not UTF-8)", str(len(prov["skipped_not_utf8"])))
    for name, info in manifest.get("sources", {}).items() if len(manifest.get("sources", {})) > 1 else ():
        table.add_row(f"source {name}", f"weight {info['weight']:g}: {info['documents']:,} documents, "
                      f"{info['tokens']:,} tokens")
    removed = {k: v for k, v in manifest.get("filters", {}).items() if v}
    if removed:
        table.add_row("removed", ", ".join(f"{k} {v:,}" for k, v in removed.items()))
    if manifest.get("pii", {}).get("matches"):
        pii = manifest["pii"]
        table.add_row(f"PII ({pii['mode']})", ", ".join(f"{k} {v:,}" for k, v in pii["matches"].items()))
    return table


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app."""
    data_app = typer.Typer(help="Corpora → tokenizer + token shards + manifest.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("build")
    def build(
        ctx: typer.Context,
        out: Path = typer.Option(..., "--out", help="the data dir to create (or reuse when up to date)"),
        corpus: str = field_option(DataConfig, "corpus", "--corpus"),
        glob: str = field_option(DataConfig, "glob", "--glob"),
        vocab_size: int = field_option(DataConfig, "vocab_size", "--vocab-size",
                                       help="BPE vocabulary size, specials included"),
        val_fraction: float = field_option(DataConfig, "val_fraction", "--val-fraction",
                                           help="share of documents held out, in (0, 1)"),
        max_mb: float | None = field_option(DataConfig, "max_mb", "--max-mb"),
        config: Path | None = typer.Option(
            None, "--config", help="a TOML data config ([[sources]] with weights, [quality], [dedup], [pii]); "
            "options given on the command line override it"),
        tokenizer: str | None = field_option(DataConfig, "tokenizer", "--tokenizer"),
        pii: str = field_option(DataConfig, "pii.mode", "--pii"),
        workers: int | None = typer.Option(None, "--workers", min=1,
                                           help="local worker processes (default: one per CPU, at most one per task)"),
        ray_address: str | None = typer.Option(None, "--ray-address",
                                               help="run the tasks on this Ray cluster (host:port) instead"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
        as_json: bool = typer.Option(False, "--json", help="print the manifest (without documents) as JSON"),
    ) -> None:
        """Build a data dir: byte-level BPE tokenizer, train.bin/val.bin token shards and manifest.json."""
        from autarky.data import build_dataset

        fields = {"out": out, "corpus": corpus, "glob": glob, "vocab_size": vocab_size,
                  "val_fraction": val_fraction, "max_mb": max_mb, "tokenizer": tokenizer}
        if config is not None:
            given = {k: v for k, v in fields.items() if ctx.get_parameter_source(k).name == "COMMANDLINE"}
            if ctx.get_parameter_source("pii").name == "COMMANDLINE":
                given["pii"] = {"mode": pii}
            cfg = DataConfig.from_toml(config, **given)
        else:
            cfg = DataConfig.create(**fields, pii={"mode": pii})
        manifest = build_dataset(cfg, progress=not quiet and not as_json, workers=workers, ray_address=ray_address,
                                 documents=False)
        if as_json:
            typer.echo(json.dumps(manifest, indent=2))
            return
        if manifest["reused"]:
            typer.echo(f"{out} is up to date (same config and documents); nothing rebuilt")
        TableConsole().print(_summary(manifest, out))

    @data_app.command("forget")
    def forget(
        data_dir: Path = typer.Argument(..., help="a data dir built by `autarky data build`"),
        document: str = typer.Argument(..., help="the document's relative path or sha256 (see the manifest)"),
    ) -> None:
        """Remove one document from a data dir: its split file is rewritten without it, the manifest records it."""
        from autarky.data.forget import forget_document

        deletion = forget_document(data_dir, document)
        typer.echo(f"removed {deletion['relpath']} ({deletion['tokens']:,} tokens) from {data_dir}/"
                   f"{deletion['split']}.bin; the manifest records the deletion")

    @data_app.command("verify")
    def verify(data_dir: Path = typer.Argument(..., help="a data dir built by `autarky data build`")) -> None:
        """Check every file of a data dir against the sizes and sha256 hashes in its manifest."""
        from autarky.data import verify_data_dir

        manifest = verify_data_dir(data_dir)
        typer.echo(f"{data_dir}: all {len(manifest['files'])} files match the manifest")
