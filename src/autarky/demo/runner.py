"""Runs the demo's commands: echoes each one, times each section, and owns the background servers."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from rich.console import Console

from autarky.errors import UserError


class DemoRunner:
    def __init__(self, console: Console, workdir: Path) -> None:
        self.console = console
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings: list[tuple[str, float]] = []
        self._servers: dict[str, subprocess.Popen] = {}

    @contextlib.contextmanager
    def section(self, title: str) -> Iterator[None]:
        self.console.rule(f"[bold cyan]{title}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings.append((title, time.perf_counter() - start))

    def _argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "autarky", *map(str, args)]

    def echo(self, args: list[str]) -> None:
        self.console.print(f"[dim]$ autarky {shlex.join(map(str, args))}[/dim]")

    def run(self, args: list[str], capture: bool = False) -> str:
        """Run one autarky command in the foreground; its output goes to the terminal unless captured."""
        self.echo(args)
        result = subprocess.run(self._argv(args), text=True, capture_output=capture, env=_env())
        if result.returncode != 0:
            detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
            raise UserError(f"demo step failed: autarky {shlex.join(map(str, args))} {' '.join(detail)}")
        return result.stdout if capture else ""

    def start_server(self, name: str, args: list[str], ready_url: str, timeout_s: float = 600) -> None:
        """Start a long-running autarky command in the background and wait until ready_url answers 200."""
        self.echo(args)
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(self._argv(args), stdout=log, stderr=subprocess.STDOUT, env=_env())
        self._servers[name] = proc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UserError(f"{name} exited with {proc.returncode}; see {self.logs / f'{name}.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise UserError(f"{name} was not ready after {timeout_s:.0f} s; see {self.logs / f'{name}.log'}")

    def kill_server(self, name: str) -> None:
        """An outage: the server dies without warning."""
        proc = self._servers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in self._servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self._servers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._servers.clear()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
