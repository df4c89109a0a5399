"""Bad CLI input is one `Error:` line, never a traceback, never a silent other port, never an echoed password;
a new store is readable by its owner only."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autarky.cli import app
from autarky.store import database

runner = CliRunner()
GATEWAY_TOML = """require_keys = false
[providers.local]
base_url = "http://127.0.0.1:9/v1"
[models.small]
provider = "local"
"""


def one_error_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def gateway_error(args: list[str]) -> str:
    """`autarky gateway ...` in a subprocess: a gateway that starts anyway would never return, so bound it."""
    proc = subprocess.run([sys.executable, "-m", "autarky", "gateway", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in out, out
    return errors[0]


@pytest.fixture
def gateway_toml(tmp_path) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(GATEWAY_TOML)
    return path


def test_gateway_port_out_of_range(gateway_toml, tmp_path):
    line = gateway_error(["-c", str(gateway_toml), "--port", "99999", "--store", f"sqlite:///{tmp_path}/s.db"])
    assert "99999" in line and "65535" in line


def test_gateway_port_in_use(gateway_toml, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = gateway_error(["-c", str(gateway_toml), "--port", str(port), "--store", f"sqlite:///{tmp_path}/s.db"])
    assert f"{port} is already in use" in line


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_plan_non_finite_tokens(value):
    assert "--tokens" in one_error_line(["plan", "--preset", "nano", "--tokens", value, "--gpus", "8"])


def test_a_store_url_at_a_file_that_is_not_a_database(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("not a database\n" * 100)
    assert "not a database" in one_error_line(["keys", "list", "--store", f"sqlite:///{bogus}"])


@pytest.mark.parametrize("url", ["bogus://user:hunter2@host/db", "postgresql+psycopg://user:hunter2@127.0.0.1:1/db"])
def test_store_passwords_are_never_echoed(url):
    line = one_error_line(["keys", "list", "--store", url])
    assert "hunter2" not in line and "***" in line
    assert "hunter2" not in database.safe_url(url)


def test_unwritable_report_and_routes_folders(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    store = f"sqlite:///{tmp_path}/s.db"
    assert "--out" in one_error_line(["eval", "report", "--out", str(a_file / "report"), "--store", store])


def test_a_new_store_is_private(tmp_path):
    database.open_store(f"sqlite:///{tmp_path}/new.db").dispose()
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o600
