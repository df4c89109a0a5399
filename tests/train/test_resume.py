"""Checkpoints: atomic, SIGKILL-and-resume gives identical losses, SIGTERM saves and stops."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from autarky.train import read_metrics, train
from autarky.train.checkpoint import complete_checkpoints, find_checkpoint
from fixtures.train import losses, parity_config, run_cli, single_thread, write_config


@pytest.mark.slow
def test_sigkill_then_resume_logs_exactly_the_uninterrupted_losses(
    parity_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = write_config(parity_config(tiny_data_dir, out), tmp_path / "run.toml")
    # The hidden hook SIGKILLs the process right after step 5: checkpoint 3 is on disk, steps 4-5 are lost.
    killed = run_cli(["autarky", "train", "--config", str(config)], env={"AUTARKY_CRASH_AT_STEP": "5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [c.step for c in complete_checkpoints(out)] == [3]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5]

    with single_thread():
        summary = train(parity_config(tiny_data_dir, out, **{"checkpoint.resume": "auto"}))
    assert summary.step == 6
    resumed, reference = read_metrics(out), read_metrics(parity_run)
    assert losses(resumed) == losses(reference)  # exactly: same bits, not just close
    assert [r["val_loss"] for r in resumed if "val_loss" in r] == [r["val_loss"] for r in reference if "val_loss" in r]


def test_half_written_checkpoints_are_never_loaded(tiny_run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    newest = complete_checkpoints(run)[-1]
    shutil.copytree(newest.path, run / "checkpoints" / "step-99.tmp")  # a save that never got renamed
    partial = run / "checkpoints" / "step-98"
    shutil.copytree(newest.path, partial)
    (partial / "meta.json").unlink()  # renamed by hand but never completed
    assert find_checkpoint(run).step == newest.step


def test_sigterm_checkpoints_at_the_step_boundary_and_stops(tiny_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = parity_config(tiny_data_dir, out, **{"run.steps": 10_000, "checkpoint.every": 0, "run.eval_every": 0})

    def send_sigterm_after_first_row() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and metrics.read_text().strip():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=send_sigterm_after_first_row, daemon=True).start()
    with single_thread():
        summary = train(cfg)
    assert summary.stopped_by == signal.SIGTERM and 1 <= summary.step < 100
    assert [c.step for c in complete_checkpoints(out)] == [summary.step]
    assert signal.getsignal(signal.SIGTERM) is before  # our handler was removed again


def test_the_sequential_cursor_resumes_exactly(tiny_data_dir: Path, tmp_path: Path) -> None:
    """`[data] order = "sequential"` through the trainer: stopping after a checkpoint and resuming logs the same
    losses as one uninterrupted run (the cursor is a pure function of the step)."""
    sequential = {"data.order": "sequential", "run.steps": 6, "checkpoint.every": 3, "run.eval_every": 0}
    with single_thread():
        straight = train(parity_config(tiny_data_dir, tmp_path / "straight", **sequential))
        train(parity_config(tiny_data_dir, tmp_path / "split", **{**sequential, "run.steps": 3}))
        resumed = train(parity_config(tiny_data_dir, tmp_path / "split",
                                      **{**sequential, "checkpoint.resume": "auto"}))
    assert straight.step == resumed.step == 6
    assert losses(read_metrics(tmp_path / "split")) == losses(read_metrics(tmp_path / "straight"))
    random_order = parity_config(tiny_data_dir, tmp_path / "random", **{**sequential, "data.order": "random"})
    with single_thread():
        train(random_order)
    assert losses(read_metrics(tmp_path / "random")) != losses(read_metrics(tmp_path / "straight"))
