"""Gateway fixtures: one misbehaving upstream per session, and a factory of gateways pointed at it."""

from __future__ import annotations

import copy
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from autarky.demo.partners import Faults, make_app
from autarky.gateway.app import Gateway
from autarky.gateway.config import parse_config
from autarky.gateway.server import ServerThread, free_port

MASTER = "sk-master-test-0123456789abcdef"


@pytest.fixture(scope="session")
def upstream_server():
    faults = Faults()
    # A short drain: some tests leave the upstream sleeping on purpose (stalls, latency) after the gateway left.
    with ServerThread(make_app(faults), log_level="critical", graceful_s=1) as server:
        yield server, faults


@pytest.fixture
def faults(upstream_server) -> Faults:
    _, faults = upstream_server
    faults.reset()
    yield faults
    faults.reset()


def wait_for_ledger(gw, n: int, timeout_s: float = 10.0) -> None:
    """Until `n` usage rows are written. Streamed rows are queued just after the last byte is sent, so a
    client can be done a moment before its row exists."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        gw.ledger.flush()
        if gw.ledger.written >= n and not gw.ledger.pending:
            return
        time.sleep(0.01)
    raise AssertionError(f"only {gw.ledger.written} of {n} ledger rows written")


def avoid_minute_boundary(margin_s: float = 6.0) -> None:
    """Rate windows are calendar minutes: start a limit test where it cannot straddle two of them."""
    import time

    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60.05 - into)


def base_config(upstream_url: str, store: str) -> dict:
    return {
        "store": store,
        "require_keys": False,
        "master_key_env": "AUTARKY_TEST_MASTER_KEY",
        "ledger_flush_s": 0.05,
        "retry": {"max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retry_after_s": 2.0},
        "breaker": {"failure_threshold": 3, "cooldown_s": 0.5},
        "providers": {
            "local": {"kind": "openai", "base_url": f"{upstream_url}/v1", "in_house": True,
                      "max_data_class": "restricted", "timeout_s": 2.0},
            "local2": {"kind": "openai", "base_url": f"{upstream_url}/v1", "in_house": True,
                       "max_data_class": "restricted", "timeout_s": 2.0},
            "partner": {"kind": "openai", "base_url": f"{upstream_url}/v1", "region": "us",
                        "max_data_class": "internal", "timeout_s": 2.0},
            "claude": {"kind": "anthropic", "base_url": upstream_url, "region": "eu",
                       "max_data_class": "confidential", "timeout_s": 2.0},
        },
        "models": {
            "small": {"provider": "local", "upstream_id": "small-up"},
            "small2": {"provider": "local2", "upstream_id": "small2-up"},
            "gpt": {"provider": "partner", "upstream_id": "gpt-up", "usd_per_1m_input": 1000.0,
                    "usd_per_1m_output": 2000.0},
            "claude": {"provider": "claude", "upstream_id": "claude-up", "usd_per_1m_input": 3000.0,
                       "usd_per_1m_output": 15000.0},
        },
        "tasks": {"spreadsheet": {"candidates": ["gpt", "small", "claude"]},
                  "inhouse": {"candidates": ["small", "small2"]}},
        "teams": {"secure": {"self_sufficient": True}, "eu": {"regions": ["eu", "local"]},
                  "recorder": {"store_prompts": True}},
    }


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture
def make_gateway(upstream_server, tmp_path, monkeypatch):
    """make_gateway(**overrides) -> (Gateway, base_url); stopped (and its ledger flushed) at teardown.
    `accounting=` replaces the key limiter and ledger (e.g. a MemoryAccounting)."""
    server, _ = upstream_server
    monkeypatch.setenv("AUTARKY_TEST_MASTER_KEY", MASTER)
    running: list[ServerThread] = []

    def factory(store: str | None = None, accounting=None, **overrides) -> tuple[Gateway, str]:
        cfg = merge(base_config(server.url, store or f"sqlite:///{tmp_path}/gw-{len(running)}.db"), overrides)
        gateway = Gateway(parse_config(cfg), accounting)
        thread = ServerThread(gateway.app, log_level="critical", header_timeout_s=gateway.config.header_timeout_s,
                              max_header_bytes=gateway.config.max_header_bytes).start()
        running.append(thread)
        return gateway, thread.url

    yield factory
    for thread in running:
        thread.stop()


def to_toml(data: dict, prefix: str = "") -> str:
    """Just enough TOML for gateway configs (tables of scalars and lists), for subprocess tests."""
    import json

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{prefix}.{k}" if prefix else k
            lines.append(f"\n[{name}]")
            lines.append(to_toml(v, name))
    return "\n".join(lines)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL from the Debian package (as user postgres when we are root), one per session.
    Yields a SQLAlchemy URL to its `postgres` database; stopped and deleted at the end."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        raise RuntimeError("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run does it)")
    bindir = Path(initdbs[-1]).parent
    base = Path(tempfile.mkdtemp(prefix="autarky-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        shutil.chown(base, user)
        run_as = ["runuser", "-u", user, "--"]
    data, port = base / "data", free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=200")
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
                    "-w", "-t", "60", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_store(postgres_server) -> str:
    """A fresh database on the shared server for one test."""
    import psycopg

    name = "t_" + secrets.token_hex(6)
    dsn = postgres_server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + "/" + name
