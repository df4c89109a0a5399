"""The sandbox holds: each escape a model's code could try, tried (issue 14).

Every test here failed against the old runner (rlimits in a plain subprocess, a pass marker in the file it ran).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autarky.errors import UserError
from autarky.evals import sandbox
from autarky.evals.graders import get_grader
from autarky.evals.sandbox import MAX_PROCESSES, TMPFS_BYTES, run_python
from autarky.evals.sandbox_calls import run_tests

ADD = {"id": "add", "entry_point": "add", "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0", "timeout_s": 3}


def grade(output: str, item: dict = ADD) -> float:
    return get_grader("python-tests").grade(item, output, {}).score


def test_code_cannot_mark_itself_passed():
    # It finds the grader's pass marker in the file it runs from (or the tests there), prints it, exits 0.
    reads_the_marker = (
        "import os, re, sys\n"
        "text = open('main.py').read()\n"
        "found = re.search(r'AUTARKY-TESTS-PASSED-[0-9a-f]+', text)\n"
        "if found:\n"
        "    print(found.group(0), flush=True)\n"
        "    os._exit(0)\n"
        "def add(a, b):\n"
        "    return 0\n"
    )
    assert grade(reads_the_marker) == 0.0
    equal_to_anything = "class Anything:\n    def __eq__(self, other):\n        return True\n" \
                        "def add(a, b):\n    return Anything()\n"
    assert grade(equal_to_anything) == 0.0
    exits_cleanly = "import os\nos._exit(0)\n"
    assert grade(exits_cleanly) == 0.0
    assert grade("def add(a, b):\n    return a + b\n") == 1.0


def test_tests_see_plain_data_and_builtin_exceptions():
    code = "def split(s):\n    if not s:\n        raise ValueError('empty')\n    return (s[0], {s: [1.5, b'x']})\n"
    tests = "assert split('ab') == ('a', {'ab': [1.5, b'x']})\ntry:\n    split('')\nexcept ValueError:\n    pass\n" \
            "else:\n    raise AssertionError('no ValueError')\n"
    assert run_tests(code, tests).passed
    # A test's `except Exception` cannot swallow the sandbox dying mid-call.
    hangs = "def split(s):\n    while True:\n        pass\n"
    verdict = run_tests(hangs, "try:\n    split('a')\nexcept Exception:\n    pass\n", timeout_s=1.0)
    assert not verdict.passed and verdict.timed_out


def test_a_detached_child_holding_the_pipes_does_not_hang_grading():
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    time.sleep(60)\n"
            "    os._exit(0)\n"
            "def add(a, b):\n    return a + b\n")
    started = time.monotonic()
    result = run_python(code + "print('done')\n", timeout_s=2.0)
    assert time.monotonic() - started < 8 and "done" in result.stdout
    started = time.monotonic()
    grade(code)
    assert time.monotonic() - started < 8


def test_nothing_outlives_grading_or_writes_outside(tmp_path):
    late = tmp_path / "late.txt"
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    for fd in (0, 1, 2):\n"
            "        os.close(fd)\n"
            "    for _ in range(100):\n"
            "        time.sleep(0.1)\n"
            "        try:\n"
            f"            open({str(late)!r}, 'a').write('x')\n"
            "        except OSError:\n"
            "            pass\n"
            "    os._exit(0)\n"
            "def add(a, b):\n    return a + b\n")
    grade(code)
    run_python(code)
    time.sleep(1.5)
    assert not late.exists()


def test_code_cannot_read_the_graders_environment_through_proc():
    planted = "sk-planted-" + secrets.token_hex(8)
    code = ("import os\n"
            "found = []\n"
            "for pid in os.listdir('/proc'):\n"
            "    try:\n"
            "        found.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except (OSError, ValueError):\n"
            "        pass\n"
            "print(b'\\n'.join(found).decode('utf-8', 'replace'))\n"
            "print(sorted(os.environ))\n")
    grader = ("import sys\nfrom autarky.evals.sandbox import run_python\n"
              f"print(run_python({code!r}).stdout)\n")
    env = {**os.environ, "PARTNER_API_KEY": planted}
    done = subprocess.run([sys.executable, "-c", grader], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert planted not in done.stdout and "PARTNER_API_KEY" not in done.stdout
    assert "['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONHASHSEED', 'TMPDIR']" in done.stdout


def test_code_cannot_read_a_file_outside(tmp_path):
    secret = tmp_path / "store.db"
    secret.write_text("planted-secret-" + secrets.token_hex(4))
    result = run_python(f"print(open({str(secret)!r}).read())\n")
    assert "planted-secret" not in result.stdout and "FileNotFoundError" in result.stderr
    home = run_python("import os\nprint(sorted(os.listdir('/')))\n")
    assert home.ok and "'etc'" not in home.stdout and "'work'" not in home.stdout and "'home'" not in home.stdout


def test_code_cannot_signal_another_process():
    victim = subprocess.Popen(["sleep", "60"])
    try:
        result = run_python(f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n")
        time.sleep(0.3)
        assert victim.poll() is None and "ProcessLookupError" in result.stderr
        seen = run_python("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n")
        assert seen.ok and max(eval(seen.stdout)) < 10  # noqa: S307 - our own output: its pid namespace only
    finally:
        victim.kill()
        victim.wait()


def test_a_fork_bomb_is_bounded():
    code = ("import os, time\n"
            "made = 0\n"
            "for _ in range(300):\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        break\n"
            "    if pid == 0:\n"
            "        os.close(1)\n"
            "        time.sleep(30)\n"
            "        os._exit(0)\n"
            "    made += 1\n"
            "print('made', made, flush=True)\n")
    result = run_python(code, timeout_s=10)
    made = int(result.stdout.split()[-1])
    assert made <= MAX_PROCESSES


def test_no_network_even_from_a_child_process(tmp_path):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    unix_path = str(tmp_path / "listener.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    reached: list[str] = []

    def accept(server: socket.socket, name: str) -> None:
        server.settimeout(8)
        try:
            conn, _ = server.accept()
            reached.append(name)
            conn.close()
        except OSError:
            pass

    threads = [threading.Thread(target=accept, args=(s, n)) for s, n in ((tcp, "tcp"), (unix, "unix"))]
    for t in threads:
        t.start()
    port = tcp.getsockname()[1]
    child = (f"import socket\n"
             f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\nexcept OSError as e:\n"
             f"    print('tcp', e)\n"
             f"s = socket.socket(socket.AF_UNIX)\n"
             f"try:\n    s.connect({unix_path!r})\nexcept OSError as e:\n    print('unix', e)\n")
    code = f"import subprocess, sys\nsubprocess.run([sys.executable, '-I', '-c', {child!r}])\n"
    run_python(code, timeout_s=5)
    for server in (tcp, unix):
        server.close()
    for t in threads:
        t.join()
    assert reached == []


def test_memory_and_disk_bombs_are_bounded():
    grows = "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n"
    result = run_python(grows, memory_mb=256, timeout_s=10)
    assert not result.ok and "MemoryError" in result.stderr
    fills = ("written = 0\n"
             "try:\n"
             "    for i in range(30):\n"
             "        with open(f'f{i}', 'wb') as f:\n"
             "            f.write(b'x' * 10 ** 7)\n"
             "        written += 10 ** 7\n"
             "except OSError:\n"
             "    pass\n"
             "print(written)\n")
    result = run_python(fills, timeout_s=10)
    assert int(result.stdout.split()[-1]) <= TMPFS_BYTES


def test_without_isolation_the_grader_refuses_unless_opted_in(monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    monkeypatch.delenv(sandbox.UNSANDBOXED_ENV, raising=False)
    with pytest.raises(UserError, match="bubblewrap") as refused:
        run_tests("def add(a, b):\n    return a + b\n", ADD["tests"])
    assert sandbox.UNSANDBOXED_ENV in str(refused.value)
    monkeypatch.setenv(sandbox.UNSANDBOXED_ENV, "1")
    assert run_tests("def add(a, b):\n    return a + b\n", ADD["tests"]).passed


def test_this_host_sandboxes():
    """CI installs bubblewrap (.ci/run); the tests above are only meaningful with it."""
    assert sandbox.isolation_available(), "install bubblewrap: the python-functions grader refuses without it"
    assert Path("/usr/bin/bwrap").exists() or sandbox._bwrap()
