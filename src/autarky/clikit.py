"""What every stage's commands share: the store options and their one precedence rule, options whose default
and help come from a pydantic config field, hidden aliases of moved commands, and a console for tables.

A utility at the bottom of the stage order (like autarky.errors): it imports no stage, so each stage's
commands.py can use it.

The store rule, the same for every command that reads or writes the store:
`--store URL`, else the `store` of the gateway.toml given with `-c/--config`, else the default SQLite file under
AUTARKY_HOME (`sqlite:///$AUTARKY_HOME/autarky.db`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console

from autarky.errors import UserError
from autarky.paths import default_store_url

STORE_HELP = "SQLAlchemy store URL; wins over --config's store (default: SQLite under AUTARKY_HOME)"
CONFIG_HELP = "gateway.toml whose `store` is used when --store is not given"


def store_option() -> Any:
    """`--store URL` (see the module docstring for the precedence)."""
    return typer.Option(None, "--store", help=STORE_HELP)


def config_option(help: str = CONFIG_HELP) -> Any:  # noqa: A002 - Typer's own keyword
    """`-c/--config gateway.toml`, optional."""
    return typer.Option(None, "--config", "-c", help=help)


def choose_store(store: str | None = None, config: str | Path | None = None) -> str:
    """The store URL by the one rule: --store, else the config's `store`, else AUTARKY_HOME's SQLite file."""
    if store:
        return store
    if config is not None:
        path = Path(config)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"gateway config {path} not found; start from examples/gateway.toml") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"gateway config {path} is not valid TOML: {exc}") from None
        url = data.get("store")
        if url is not None and not isinstance(url, str):
            raise UserError(f"gateway config {path}: field store must be a URL string")
        if url:
            return url
    return default_store_url()


def field_default(model: type[BaseModel], dotted: str) -> Any:
    """The default of a (possibly nested, "section.key") field of a pydantic config model."""
    return _field(model, dotted)[1]


def field_help(model: type[BaseModel], dotted: str, help: str | None = None,  # noqa: A002
               show_default: bool = False) -> str:
    """The field's description (or `help` where it has none), optionally followed by `[default: …]`."""
    field, default = _field(model, dotted)
    text = help or field.description
    if not text:
        raise ValueError(f"{model.__name__}.{dotted} has no description; pass help=")
    return f"{text} [default: {default}]" if show_default else text


def field_option(model: type[BaseModel], dotted: str, *names: str, help: str | None = None,  # noqa: A002
                 **kwargs: Any) -> Any:
    """A Typer option whose default and help are the config field's own (so a default changes in one place)."""
    return typer.Option(field_default(model, dotted), *names, help=field_help(model, dotted, help), **kwargs)


def _field(model: type[BaseModel], dotted: str) -> tuple[Any, Any]:
    *sections, key = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # type: ignore[assignment]
    field = model.model_fields[key]
    default = field.get_default(call_default_factory=True)
    return field, default


def hidden_alias(group: typer.Typer, name: str, command: Callable[..., Any], new_spelling: str) -> None:
    """Keep an old spelling working for one release: the same command, same options, hidden from --help."""
    group.command(name, hidden=True, help=f"Deprecated spelling of `autarky {new_spelling}`.")(command)


class TableConsole(Console):
    """A Rich console that fits a terminal, and prints at the content's natural width when piped or captured
    (Rich would otherwise assume 80 columns and cut table cells short, e.g. model names)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 - Rich's name
        if self.is_terminal or not objects:
            super().print(*objects, **kwargs)
            return
        wide = self.options.update_width(1_000_000)
        self.width = max(1, *(self.measure(o, options=wide).maximum for o in objects))
        super().print(*objects, **kwargs)
