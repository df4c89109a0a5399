"""Run untrusted Python (model-written code) in a sandbox; sandbox_calls.py grades it from outside.

The sandbox is bubblewrap (`bwrap`): new user, pid, network, ipc, uts and cgroup namespaces; an empty
environment; a read-only view of the system and of this Python's installation only (no store, no home, no
/etc); a private size-limited tmpfs as the only writable place; its own /proc, so no other process can be seen
or signalled; no network at all. Inside, before any untrusted line runs, the harness (sandbox_harness.py)
lowers its rlimits: address space, CPU seconds, file size, open files, and processes, counted per user
namespace. Root's processes are exempt from RLIMIT_NPROC even there, so a root runner (CI) starts bwrap as
nobody where this Python is readable by nobody, else in a fresh pids cgroup where the host allows one. At the
deadline the whole tree is killed: bwrap is pid 1 of the sandbox's pid namespace, and when it dies the kernel
kills everything inside.

Where bwrap is missing or cannot create namespaces, nothing runs unless the user opts in with
AUTARKY_ALLOW_UNSANDBOXED_CODE=1 (then: rlimits and a process group only, no isolation).
"""

from __future__ import annotations

import functools
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

from autarky.errors import UserError

UNSANDBOXED_ENV = "AUTARKY_ALLOW_UNSANDBOXED_CODE"
MAX_PROCESSES = 16
TMPFS_BYTES = 64 * 1024 * 1024

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


def start(workdir: str, names: list[str], mode: str, memory_mb: int, cpu_s: int,
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


def kill_tree(proc: subprocess.Popen) -> None:
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


def prepare_workdir(tmp: str, code: str) -> list[str]:
    Path(tmp, "main.py").write_text(code, encoding="utf-8")
    Path(tmp, "_harness.py").write_text(_HARNESS, encoding="utf-8")
    return ["_harness.py", "main.py"]


# ---- a script, with its output ------------------------------------------------------------------------------

def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, max_output: int = 20_000) -> SandboxResult:
    """Run `code` as a script in the sandbox; never raises for anything the code does (only UserError when
    this host cannot sandbox it). Output is kept to its last `max_output` bytes per stream."""
    with tempfile.TemporaryDirectory(prefix="autarky-sandbox-") as tmp:
        files = prepare_workdir(tmp, code)
        proc, isolated = start(tmp, files, "script", memory_mb, max(1, int(timeout_s) + 1), subprocess.DEVNULL,
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
    kill_tree(proc)
    for stream in buffers:
        stream.close()
    out, err = (bytes(b).decode("utf-8", "replace") for b in buffers.values())
    return out, err, timed_out
