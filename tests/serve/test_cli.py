"""`autarky serve` as a subprocess, the way the demo runs it: URL printed when ready, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def start(args: list[str], home: Path) -> subprocess.Popen:
    env = {**os.environ, "AUTARKY_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "autarky", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_url(proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"server exited early:\n{''.join(seen)}")
        seen.append(line)
        match = re.search(r"ready at (http://\S+/v1)", line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining the pipe
            return match.group(1)
    raise AssertionError(f"no URL within {timeout}s:\n{''.join(seen)}")


def test_serve_two_named_models_and_finish_in_flight_on_sigterm(tiny_hf_model_dir, tmp_path):
    proc = start([f"alpha={tiny_hf_model_dir}", f"beta={tiny_hf_model_dir}", "--port", "0", "--max-batch", "4"],
                 tmp_path)
    try:
        base = wait_for_url(proc)
        assert [m["id"] for m in httpx.get(f"{base}/models").json()["data"]] == ["alpha", "beta"]
        assert httpx.get(base.removesuffix("/v1") + "/health").status_code == 200
        events: list[str] = []
        first = threading.Event()

        def stream() -> None:
            payload = {"model": "beta", "prompt": "x", "max_tokens": 150, "stream": True, "ignore_eos": True}
            with httpx.stream("POST", f"{base}/completions", json=payload, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)  # mid-stream: the request must still complete
        reader.join(120)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "error" not in chunks[-1], chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in chunks if c["choices"][0]["text"]) > 0


@pytest.mark.parametrize("policy", [None, "ACTIVE"])
def test_serve_runs_with_passive_openmp_threads_unless_told_otherwise(tiny_hf_model_dir, tmp_path, policy):
    """libgomp's spinning threads starve a server on shared cores: `autarky serve` re-runs itself with
    OMP_WAIT_POLICY=PASSIVE (same process id, read back from the environment it runs with), unless the operator
    set a policy, which it keeps."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env = {**env, "OMP_WAIT_POLICY": policy} if policy else env
    home = {"AUTARKY_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "autarky", "serve", str(tiny_hf_model_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**env, **home})
    try:
        base = wait_for_url(proc)
        assert httpx.get(f"{base}/models").status_code == 200
        environ = dict(item.split("=", 1) for item in Path(f"/proc/{proc.pid}/environ").read_text().split("\0")
                       if "=" in item)  # fmt: skip
        assert environ.get("OMP_WAIT_POLICY") == (policy or "PASSIVE")
    finally:
        proc.terminate()
        proc.wait(60)


def test_serve_bad_model_exits_with_a_clear_error(tmp_path):
    proc = start([str(tmp_path / "missing"), "--port", "0"], tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "does not exist" in out


def fails_cleanly(args: list[str], home: Path) -> str:
    """Runs `autarky serve ARGS`, which must exit 2 with one `Error:` line and no server started."""
    proc = start(args, home)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    assert "Started server process" not in out and "ready at" not in out, out
    assert sum(line.startswith("Error:") for line in out.splitlines()) == 1, out
    return out


def test_serve_missing_model_fails_before_listening_with_one_error(tmp_path):
    out = fails_cleanly([str(tmp_path / "missing"), "--port", "0"], tmp_path)
    assert out.count("does not exist") == 1, out


def test_serve_unloadable_model_fails_before_listening(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    fails_cleanly([str(folder), "--port", "0"], tmp_path)


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_serve_impossible_port_is_one_error(tiny_hf_model_dir, tmp_path, port):
    assert "port" in fails_cleanly([str(tiny_hf_model_dir), f"--port={port}"], tmp_path)


def test_serve_port_in_use_is_one_error(tiny_hf_model_dir, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fails_cleanly([str(tiny_hf_model_dir), "--port", str(taken.getsockname()[1])], tmp_path)


def test_serve_missing_device_is_one_error(tiny_hf_model_dir, tmp_path):
    assert "cuda:7" in fails_cleanly([str(tiny_hf_model_dir), "--port", "0", "--device", "cuda:7"], tmp_path)


def test_serve_shows_progress_while_loading(tiny_hf_model_dir, tmp_path):
    proc = start([str(tiny_hf_model_dir), "--port", "0"], tmp_path)
    try:
        seen = []
        while not seen or "ready at" not in seen[-1]:
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        assert any(line.startswith("autarky serve: loading") for line in seen), "".join(seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
