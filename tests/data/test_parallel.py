"""Parallel, resumable builds: tasks depend on the input only, so workers, resumption and Ray change nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autarky.data import DataConfig, build_dataset
from fixtures.data import texts, write_jsonl

pytestmark = pytest.mark.slow


def _config(corpus: Path, out: Path) -> DataConfig:
    # ~0.3 MB in tasks of 40 kB: eight tasks
    return DataConfig(out=out, corpus=str(corpus), vocab_size=300, val_fraction=0.1, task_mb=0.04,
                      tokenizer_sample_mb=0.1)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", texts(400, seed=1) + texts(40, seed=1))  # 40 exact duplicates


def test_one_worker_and_four_build_the_same_bytes(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "out"  # one path for both: the manifest records it
    one = build_dataset(_config(corpus, out), progress=False, workers=1)
    first = _files(out)
    shutil.rmtree(out)
    four = build_dataset(_config(corpus, out), progress=False, workers=4)
    assert one["provenance"]["tasks"] >= 6 and one["filters"]["exact_duplicates"] == 40
    assert four["reused"] is False and _files(out) == first  # shards, tokenizer and manifest


def test_a_killed_build_resumes_from_its_finished_tasks(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "out"
    script = (
        "import sys; from pathlib import Path; from autarky.data import DataConfig, build_dataset; "
        f"build_dataset(DataConfig(out=Path({str(out)!r}), corpus={str(corpus)!r}, vocab_size=300, "
        "val_fraction=0.1, task_mb=0.04, tokenizer_sample_mb=0.1), progress=False, workers=1)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 120
    while not len(list(out.glob(".building/tasks-*/scan-*.json"))) >= 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()

    resumed = build_dataset(_config(corpus, out), progress=False, workers=1)
    assert resumed["resumed_tasks"] >= 3
    fresh = build_dataset(_config(corpus, tmp_path / "fresh"), progress=False, workers=1)
    assert fresh["resumed_tasks"] == 0
    resumed_files, fresh_files = _files(out), _files(tmp_path / "fresh")
    manifests = [json.loads(files.pop("manifest.json")) for files in (resumed_files, fresh_files)]
    for manifest in manifests:
        del manifest["config"]["out"]
    assert resumed_files == fresh_files and manifests[0] == manifests[1]


_RAY_HEAD = """
import sys, ray
ctx = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=80 * 2**20,
               configure_logging=False, _temp_dir=sys.argv[1])
print(ctx.address_info["gcs_address"].rpartition(":")[2], flush=True)
sys.stdin.read()  # until the test closes our stdin
ray.shutdown()
"""


@pytest.fixture
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A 2-CPU Ray cluster on 127.0.0.1, started by a helper process and torn down with it."""
    pytest.importorskip("ray")
    temp = tmp_path_factory.mktemp("ray")
    # a throwaway cluster that only this test talks to: no token (the build process would need it too)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    head = subprocess.Popen([sys.executable, "-c", _RAY_HEAD, str(temp)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        port = head.stdout.readline().strip()
        assert port, "the Ray head did not start"
        yield f"127.0.0.1:{port}"
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_ray_builds_what_the_local_pool_builds(corpus: Path, tmp_path: Path, monkeypatch, ray_cluster: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "out"
    build_dataset(_config(corpus, out), progress=False, workers=2)
    local = _files(out)
    shutil.rmtree(out)
    on_ray = build_dataset(_config(corpus, out), progress=False, ray_address=ray_cluster)
    assert on_ray["reused"] is False and _files(out) == local


_SCRIPT = """
import sys
import wave  # stands for the CLI's heavy imports (torch): a worker must not repeat them

from autarky.data.tasks import run_tasks

if __name__ == "__main__":
    print(run_tasks(eval, [("'wave' in __import__('sys').modules",)] * 2, 2, None, lambda *_: None))
"""


def test_workers_do_not_rerun_the_parent_script(tmp_path: Path) -> None:
    """A console script (like `autarky`) is the main module by path; spawned workers must not import what it does."""
    script = tmp_path / "console_script.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[False, False]"
