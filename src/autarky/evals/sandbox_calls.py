"""Grading from outside the sandbox: the suite's tests run here, against the solution's functions running there.

`run_tests` loads the code in the sandbox (sandbox.py), then executes the tests in this (trusted) process
against proxies of the solution's functions; each call crosses into the sandbox and only plain data (None,
bool, int, float, str, bytes, list, tuple, dict, set) comes back, so nothing the code prints or returns can
turn a failed assertion into a pass. Limits: arguments and results must be plain data (a function returning
a generator or an object fails), and a test cannot observe a function mutating its arguments.
"""

from __future__ import annotations

import builtins
import json
import os
import selectors
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from autarky.evals.sandbox import kill_tree, prepare_workdir, start

MAX_REPLY = 8 * 1024 * 1024


@dataclass(frozen=True)
class TestVerdict:
    passed: bool
    detail: str
    timed_out: bool = False


class SandboxGone(BaseException):
    """The sandbox stopped answering (deadline, crash, protocol abuse). A BaseException so that a test's
    `except Exception` cannot swallow it and go on to pass."""


class RemoteError(Exception):
    """An exception raised inside the sandbox whose type is not a builtin exception."""


def encode(value: Any, depth: int = 0) -> Any:
    """Plain data as JSON with tagged containers (shared with the harness, which has its own copy)."""
    if depth > 200:
        raise TypeError("value nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        tag = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}[type(value)]
        return {tag: [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    raise TypeError(f"{type(value).__name__} is not plain data")


def decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise SandboxGone("malformed reply from the sandbox")
    (tag, items), = value.items()
    if tag == "bytes":
        return bytes.fromhex(items)
    if tag == "dict":
        return {decode(k): decode(v) for k, v in items}
    kind = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}.get(tag)
    if kind is None or not isinstance(items, list):
        raise SandboxGone("malformed reply from the sandbox")
    return kind(decode(v) for v in items)


class _Channel:
    def __init__(self, proc: subprocess.Popen, deadline: float) -> None:
        self.proc = proc
        self.deadline = deadline
        self._buffer = bytearray()
        self.timed_out = False

    def send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise SandboxGone("the sandboxed code exited") from exc

    def receive(self) -> dict:
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.timed_out = True
                    raise SandboxGone("timed out")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise SandboxGone("the sandboxed code exited")
                self._buffer += chunk
                if len(self._buffer) > MAX_REPLY:
                    raise SandboxGone("reply from the sandbox too large")
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise SandboxGone("malformed reply from the sandbox") from exc
        if not isinstance(reply, dict):
            raise SandboxGone("malformed reply from the sandbox")
        return reply

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        self.send({"call": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        reply = self.receive()
        if "error" in reply:
            raise _exception(reply["error"])
        try:
            return decode(reply.get("value"))
        except (ValueError, TypeError, RecursionError) as exc:
            raise SandboxGone("malformed reply from the sandbox") from exc


def _exception(error: Any) -> Exception:
    kind, message = (str(error.get("type")), str(error.get("message"))) if isinstance(error, dict) else ("", "")
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    return RemoteError(f"{kind}: {message}")


class _Remote:
    """A solution's function as the tests see it: a call is a round trip with plain data."""

    def __init__(self, channel: _Channel, name: str) -> None:
        self._channel, self.__name__ = channel, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.call(self.__name__, args, kwargs)


def run_tests(code: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 512) -> TestVerdict:
    """Load `code` in the sandbox, then run `tests` here against it; the verdict is this process's alone."""
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="autarky-sandbox-") as tmp:
        files = prepare_workdir(tmp, code)
        # The code's own output is not needed (and never read): it goes nowhere, so it cannot block on a pipe.
        proc, _ = start(tmp, files, "serve", memory_mb, max(1, int(timeout_s) + 1), subprocess.PIPE,
                         subprocess.DEVNULL)
        channel = _Channel(proc, deadline)
        try:
            return _verdict(channel, tests)
        finally:
            kill_tree(proc)
            proc.stdin.close()
            proc.stdout.close()


def _verdict(channel: _Channel, tests: str) -> TestVerdict:
    try:
        hello = channel.receive()
        if "error" in hello:
            failure = _exception(hello["error"])
            return TestVerdict(False, f"loading the code failed: {type(failure).__name__}: {failure}")
        names = hello.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) and n.isidentifier() for n in names):
            return TestVerdict(False, "malformed reply from the sandbox")
        namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "tests"}
        namespace.update({n: _Remote(channel, n) for n in names[:1000]})
        exec(compile(tests, "tests", "exec"), namespace)  # noqa: S102 - the suite's own tests, trusted
    except SandboxGone as exc:
        return TestVerdict(False, str(exc), timed_out=channel.timed_out)
    except Exception as exc:  # noqa: BLE001 - a failing test is the verdict, whatever it raised
        return TestVerdict(False, f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__)
    return TestVerdict(True, "passed")
