"""Run untrusted Python (model-written code plus its unit tests) in a constrained subprocess.

Limits, in layers:
- a fresh temporary directory as cwd and HOME, removed afterwards; a near-empty environment; `python -I`;
- resource.setrlimit in the child: address space (memory), CPU seconds, file size, open files, processes;
- a wall-clock timeout that kills the child's whole process group;
- no network: when `unshare -n` works on this host (root, or unprivileged user namespaces) the child runs in an
  empty network namespace (loopback down, no routes). Independently, the harness replaces `socket.socket`
  and friends before the model's code runs, so even without namespaces every socket creation raises.
This is a guard against accidents and runaway code from a model, not a security boundary against an
adversary; run untrusted suites inside a container if that matters.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_HARNESS = '''
import socket, _socket, sys, runpy
def _denied(*args, **kwargs):
    raise PermissionError("network access is disabled in the autarky sandbox")
for _mod in (socket, _socket):
    for _name in ("socket", "create_connection", "socketpair", "fromfd", "getaddrinfo", "create_server"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _denied)
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
'''


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    network_namespace: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@functools.cache
def _unshare_prefix() -> tuple[str, ...]:
    """The command prefix that puts the child in an empty network namespace, or () where that is unavailable."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for prefix in ((exe, "-n"), (exe, "-r", "-n")):
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return prefix
    return ()


def _limit(memory_mb: int, cpu_s: int) -> None:
    os.setsid()  # own process group, so a timeout kills grandchildren too
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, max_output: int = 20_000) -> SandboxResult:
    """Run `code` as a script under the limits above; never raises for anything the code does."""
    prefix = _unshare_prefix()
    with tempfile.TemporaryDirectory(prefix="autarky-sandbox-") as tmp:
        Path(tmp, "main.py").write_text(code, encoding="utf-8")
        Path(tmp, "_harness.py").write_text(_HARNESS, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-I", "_harness.py"],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=functools.partial(_limit, memory_mb, max(1, int(timeout_s) + 1)),
        )
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
    return SandboxResult(
        returncode=proc.returncode,
        stdout=out.decode("utf-8", "replace")[-max_output:],
        stderr=err.decode("utf-8", "replace")[-max_output:],
        timed_out=timed_out,
        network_namespace=bool(prefix),
    )
