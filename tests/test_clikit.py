"""autarky.clikit: the one store rule (--store, else --config's store, else AUTARKY_HOME), field-derived options,
and tables that keep every cell when piped."""

from __future__ import annotations

import io

import pytest
from rich.table import Table
from typer.testing import CliRunner

from autarky.cli import app
from autarky.clikit import TableConsole, choose_store, field_default, field_help
from autarky.errors import UserError
from autarky.train.config import TrainConfig


def test_store_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTARKY_HOME", str(tmp_path / "home"))
    config = tmp_path / "gateway.toml"
    config.write_text('store = "sqlite:///from-config.db"\n')
    assert choose_store("sqlite:///flag.db", config) == "sqlite:///flag.db"
    assert choose_store(None, config) == "sqlite:///from-config.db"
    assert choose_store() == f"sqlite:///{tmp_path / 'home' / 'autarky.db'}"
    bare = tmp_path / "bare.toml"
    bare.write_text("[providers]\n")
    assert choose_store(None, bare) == choose_store()  # a config without `store` means the default, as the gateway
    with pytest.raises(UserError, match="not found"):
        choose_store(None, tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("store = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        choose_store(None, tmp_path / "bad.toml")


def test_every_store_command_follows_the_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTARKY_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    by_config, by_flag = f"sqlite:///{tmp_path}/config.db", f"sqlite:///{tmp_path}/flag.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'store = "{by_config}"\n')
    for args in (["--config", str(config)], ["--store", by_flag, "-c", str(config)], []):
        made = runner.invoke(app, ["keys", "create", "--team", "t", *args])
        assert made.exit_code == 0, made.output
    listings = {name: runner.invoke(app, ["keys", "list", *args]).stdout.count("\tt\t")
                for name, args in [("config", ["-c", str(config)]), ("flag", ["--store", by_flag]), ("home", [])]}
    assert listings == {"config": 1, "flag": 1, "home": 1}
    for command in (["audit", "verify"], ["usage"], ["eval", "leaderboard", "--json"]):
        result = runner.invoke(app, [*command, "--config", str(config)])
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "config.db").is_file() and (tmp_path / "home" / "autarky.db").is_file()


def test_field_derived_help_and_defaults():
    assert field_default(TrainConfig, "run.steps") == TrainConfig().run.steps
    assert field_help(TrainConfig, "run.steps", show_default=True).endswith(f"[default: {TrainConfig().run.steps}]")
    with pytest.raises(ValueError, match="no description"):
        field_help(TrainConfig, "optim.beta1")


def test_tables_keep_full_cells_when_piped():
    name = "a-partner-model-with-a-very-long-name-" * 4
    table = Table(title="t")
    for column in ("suite", "model", "score"):
        table.add_column(column)
    table.add_row("chat-qa", name, "0.875")
    out = io.StringIO()
    TableConsole(file=out).print(table)
    assert name in out.getvalue() and "0.875" in out.getvalue()
    narrow = io.StringIO()
    TableConsole(file=narrow, width=60, force_terminal=True, color_system=None).print(table)  # a terminal: fit it, as Rich does
    assert max(len(line) for line in narrow.getvalue().splitlines()) <= 60
