"""Run untrusted Python (model-written code) in a sandbox, and grade it from outside.

The sandbox is bubblewrap (`bwrap`): new user, pid, network, ipc, uts and cgroup namespaces; an empty
environment; a read-only view of the system and of this Python's installation only (no store, no home, no
/etc); a private size-limited tmpfs as the only writable place; its own /proc, so no other process can be seen
or signalled; no network at all.
A root runner (CI) starts bwrap as nobody where this Python is readable by nobody, else in a fresh pids cgroup
where the host allows one, since root's processes are exempt from RLIMIT_NPROC. Inside, before any untrusted line runs, the harness lowers its rlimits
(address space, CPU seconds, file size, open files, and processes — counted per user namespace, so this
works when the runner is root, as in CI, and when it is not). At the deadline the whole tree is killed: bwrap
is pid 1 of the sandbox's pid namespace, and when it dies the kernel kills everything inside.

Grading never trusts the sandbox's output: `run_tests` executes the suite's tests in this (trusted) process
against proxies of the solution's functions; each call crosses into the sandbox and only plain data
(None, bool, int, float, str, bytes, list, tuple, dict, set) comes back, so nothing the code prints or
returns can turn a failed assertion into a pass.

Where bwrap is missing or cannot create namespaces, nothing runs unless the user opts in with
AUTARKY_ALLOW_UNSANDBOXED_CODE=1 (then: rlimits and a process group only, no isolation).
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autarky.errors import UserError

UNSANDBOXED_ENV = "AUTARKY_ALLOW_UNSANDBOXED_CODE"
MAX_PROCESSES = 16
TMPFS_BYTES = 64 * 1024 * 1024
MAX_REPLY = 8 * 1024 * 1024

_HARNESS = Path(__file__).with_name("sandbox_harness.py").read_text(encoding="utf-8")


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


@dataclass(frozen=True)
class TestVerdict:
    passed: bool
    detail: str
    timed_out: bool = False


# ---- isolation ----------------------------------------------------------------------------------------------

def _python() -> tuple[str, list[str]]:
    """This interpreter's real executable and the read-only paths it needs (its installation)."""
    exe = os.path.realpath(sys.executable)
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    return exe, sorted(r for r in roots if not r.startswith("/usr/"))


def _bwrap_argv(bwrap: str, workdir: str, files: list[tuple[int, str]]) -> list[str]:
    """`files`: (readable fd, name) pairs, copied into the sandbox's working folder by bwrap from the fd, so that
    bwrap needs no access to the runner's (private) temporary folder."""
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--uid", "65534", "--gid", "65534", "--disable-userns",
            "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for root in _python()[1]:
        argv += ["--ro-bind", root, root]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
             "--dir", workdir, "--chdir", workdir]
    for fd, name in files:
        argv += ["--ro-bind-data", str(fd), os.path.join(workdir, name)]
    for name, value in _env(workdir).items():
        argv += ["--setenv", name, value]
    return argv


def _env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}


NOBODY = 65534


def _drop_root() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@functools.cache
def _bwrap() -> tuple[str, bool] | None:
    """bwrap, if it is installed and can build the sandbox on this host (a trial run of `python -c pass`), and
    whether to start it as nobody: a root runner does so where it can, because root's processes are exempt from
    RLIMIT_NPROC even inside a user namespace (else a pids cgroup bounds them, where the host allows one)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    for drop in (True, False) if os.geteuid() == 0 else (False,):
        try:
            done = subprocess.run([*_bwrap_argv(exe, "/tmp/autarky-sandbox-trial", []), _python()[0], "-I", "-S",
                                   "-c", "pass"], capture_output=True, timeout=30, cwd="/",
                                  preexec_fn=_drop_root if drop else None)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return exe, drop
    return None


def isolation_available() -> bool:
    return _bwrap() is not None


def _command(workdir: str, files: list[tuple[int, str]], mode: str, memory_mb: int,
             cpu_s: int) -> tuple[list[str], tuple[str, bool] | None]:
    """The argv that runs the harness in `mode`, and the bwrap it runs under (None: not isolated); refuses when
    it cannot isolate it and the user did not opt out."""
    python = _python()[0]
    harness = [python, "-I", "-S", os.path.join(workdir, "_harness.py"), mode, str(memory_mb), str(cpu_s),
               str(MAX_PROCESSES)]
    bwrap = _bwrap()
    if bwrap is not None:
        return [*_bwrap_argv(bwrap[0], workdir, files), *harness], bwrap
    if os.environ.get(UNSANDBOXED_ENV) == "1":
        return harness, None
    raise UserError(
        "cannot sandbox model-written code on this host: bubblewrap (`bwrap`) is missing or cannot create "
        "namespaces here (install the `bubblewrap` package; in a container allow unprivileged user namespaces); "
        f"set {UNSANDBOXED_ENV}=1 to run it anyway with resource limits only, no isolation"
    )


def _pids_cgroup() -> Path | None:
    """For a root runner, a fresh pids cgroup (v1 or v2) capping the sandbox's process count, where this host
    lets us make one. Root's processes are exempt from RLIMIT_NPROC even inside a user namespace."""
    if os.geteuid() != 0:
        return None
    try:
        own = {line.split(":", 2)[1]: line.split(":", 2)[2].strip()
               for line in Path("/proc/self/cgroup").read_text().splitlines() if line.count(":") >= 2}
    except OSError:
        return None
    name = f"autarky-sandbox-{os.getpid()}-{time.monotonic_ns()}"
    for base, key in ((Path("/sys/fs/cgroup/pids"), "pids"), (Path("/sys/fs/cgroup"), "")):
        if key not in own:
            continue
        group = base / own[key].lstrip("/") / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            (group / "pids.max").write_text(str(MAX_PROCESSES + 3))  # + bwrap, its init, and the harness
            return group
        except OSError:
            _remove_cgroup(group)
    return None


def _remove_cgroup(group: Path | None) -> None:
    if group is None:
        return
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # the killed processes are still leaving it


def _child(group: Path | None, drop: bool) -> None:
    """In the child, before exec: enter the pids cgroup (so bwrap and everything it starts count), or become
    nobody."""
    if group is not None:
        (group / "cgroup.procs").write_text(str(os.getpid()))
    if drop:
        _drop_root()


def _start(workdir: str, names: list[str], mode: str, memory_mb: int, cpu_s: int,
           stdin: int, stderr: int) -> tuple[subprocess.Popen, bool]:
    fds = [os.open(os.path.join(workdir, name), os.O_RDONLY) for name in names]
    group = None
    try:
        argv, bwrap = _command(workdir, list(zip(fds, names, strict=True)), mode, memory_mb, cpu_s)
        drop = bwrap is not None and bwrap[1]
        group = _pids_cgroup() if bwrap is not None and not drop else None
        proc = subprocess.Popen(argv, cwd=workdir if bwrap is None else "/", env=_env(workdir), stdin=stdin,
                                stdout=subprocess.PIPE, stderr=stderr, start_new_session=True, pass_fds=fds,
                                preexec_fn=functools.partial(_child, group, drop))
    except BaseException:
        _remove_cgroup(group)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    proc.cgroup = group  # type: ignore[attr-defined]
    return proc, bwrap is not None


def _kill(proc: subprocess.Popen) -> None:
    """Kill the tree: bwrap's process group, and with it (pid namespace) everything in the sandbox."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
        pass
    _remove_cgroup(getattr(proc, "cgroup", None))


def _workdir(tmp: str, code: str) -> list[str]:
    Path(tmp, "main.py").write_text(code, encoding="utf-8")
    Path(tmp, "_harness.py").write_text(_HARNESS, encoding="utf-8")
    return ["_harness.py", "main.py"]


# ---- a script, with its output ------------------------------------------------------------------------------

def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, max_output: int = 20_000) -> SandboxResult:
    """Run `code` as a script in the sandbox; never raises for anything the code does (only UserError when
    this host cannot sandbox it). Output is kept to its last `max_output` bytes per stream."""
    with tempfile.TemporaryDirectory(prefix="autarky-sandbox-") as tmp:
        files = _workdir(tmp, code)
        proc, isolated = _start(tmp, files, "script", memory_mb, max(1, int(timeout_s) + 1), subprocess.DEVNULL,
                                subprocess.PIPE)
        out, err, timed_out = _collect(proc, time.monotonic() + timeout_s, max_output)
    return SandboxResult(returncode=proc.returncode, stdout=out, stderr=err, timed_out=timed_out,
                         network_namespace=isolated)


def _collect(proc: subprocess.Popen, deadline: float, keep: int) -> tuple[str, str, bool]:
    """Read both pipes until they close or the deadline passes (then kill the tree); keep only the tails."""
    buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    timed_out = False
    with selectors.DefaultSelector() as sel:
        for stream in buffers:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for ready, _ in sel.select(left):
                chunk = os.read(ready.fd, 65536)
                if not chunk:
                    sel.unregister(ready.fileobj)
                    continue
                buf = buffers[ready.fileobj]
                buf += chunk
                del buf[:-keep]
    if not timed_out:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 1)
        except subprocess.TimeoutExpired:
            timed_out = True
    _kill(proc)
    for stream in buffers:
        stream.close()
    out, err = (bytes(b).decode("utf-8", "replace") for b in buffers.values())
    return out, err, timed_out


# ---- tests run here, against functions that run there ------------------------------------------------------

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
        files = _workdir(tmp, code)
        # The code's own output is not needed (and never read): it goes nowhere, so it cannot block on a pipe.
        proc, _ = _start(tmp, files, "serve", memory_mb, max(1, int(timeout_s) + 1), subprocess.PIPE,
                         subprocess.DEVNULL)
        channel = _Channel(proc, deadline)
        try:
            return _verdict(channel, tests)
        finally:
            _kill(proc)
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
