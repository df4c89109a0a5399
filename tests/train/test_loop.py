"""A short nano run: it learns, and it leaves a complete run dir that others can load."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch

from autarky.train import load_config, load_model_from_run, read_metrics
from autarky.train.checkpoint import complete_checkpoints
from autarky.train.loop import _StepClock
from fixtures.train import TINY_RUN_STEPS


def test_loss_decreases_on_nano(tiny_run_dir: Path) -> None:
    rows = read_metrics(tiny_run_dir)
    assert [r["step"] for r in rows] == list(range(1, TINY_RUN_STEPS + 1))
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert abs(first - math.log(512)) < 0.3, "an untrained model should be near uniform over 512 tokens"
    assert last < first - 0.8
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]


def test_metrics_rows_have_throughput_and_mfu(tiny_run_dir: Path) -> None:
    fpt = _flops_per_token(tiny_run_dir)
    for row in read_metrics(tiny_run_dir):
        # (no upper bound: on CPU the peak is measured, and a busy shared machine can make that measurement low)
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0
        assert row["peak_flops"] > 1e9 and "cpu" in row["device"]
        assert row["lr"] > 0 and row["tokens"] == row["step"] * 8 * 64
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * fpt / row["peak_flops"], rel=1e-9)


def _flops_per_token(run_dir: Path) -> float:
    from autarky.model.config import flops_per_token

    _, cfg, _, _ = load_model_from_run(run_dir)
    return flops_per_token(cfg, 64)


def test_run_dir_holds_resolved_config_plot_tokenizer_and_checkpoint(tiny_run_dir: Path, tiny_data_dir: Path) -> None:
    saved = tomllib.loads((tiny_run_dir / "config.toml").read_text())
    assert saved["model"]["vocab_size"] == 512 and saved["model"]["dim"] == 128  # pinned from preset + data
    assert saved["data"]["dir"] == str(tiny_data_dir.resolve())
    cfg = load_config(tiny_run_dir / "config.toml")  # the file loads back as a config
    assert cfg.run.steps == TINY_RUN_STEPS and cfg.model.preset == "nano"
    assert (tiny_run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tiny_run_dir / "tokenizer" / name).read_bytes() == (tiny_data_dir / name).read_bytes()
    assert [c.step for c in complete_checkpoints(tiny_run_dir)] == [TINY_RUN_STEPS]


def test_load_model_from_run_reproduces_the_logged_val_loss(tiny_run_dir: Path, tiny_data_dir: Path) -> None:
    from autarky.train.batches import WindowSampler
    from autarky.train.config import TrainConfig

    model, cfg, tokenizer_dir, step = load_model_from_run(tiny_run_dir)
    assert step == TINY_RUN_STEPS and cfg.vocab_size == 512 and tokenizer_dir == tiny_run_dir / "tokenizer"
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    run_cfg: TrainConfig = load_config(tiny_run_dir / "config.toml")
    from autarky.data import open_tokens

    sampler = WindowSampler(open_tokens(tiny_data_dir, "val"), seq_len=64, batch_size=8, grad_accum=1,
                            dp_size=1, dp_rank=0, seed=run_cfg.run.seed)  # fmt: skip
    with torch.no_grad():
        batches = sampler.val_batches(run_cfg.data.eval_batches, torch.device("cpu"))
        val = torch.stack([model.loss(x, y) for x, y in batches]).mean().item()
    assert abs(val - read_metrics(tiny_run_dir)[-1]["val_loss"]) < 1e-5


def test_step_clock_rates_each_window_and_leaves_the_first_step_out_of_the_summary() -> None:
    ticks = iter([0.0, 10.0, 10.0, 14.0, 30.0, 32.0])  # start/stop pairs; 14 → 30 is a checkpoint, off the clock
    clock = _StepClock(torch.device("cpu"), now=lambda: next(ticks))
    clock.start()
    clock.steps += 1
    clock.stop()  # step 1: 10 s (it compiles)
    clock.start()
    clock.start()  # already running: the loop calls start() every step
    clock.steps += 4
    clock.stop()  # steps 2-5: 4 s
    assert clock.take_window() == pytest.approx(5 / 14)
    clock.start()
    clock.steps += 2
    clock.stop()  # steps 6-7: 2 s
    assert clock.steady_steps_per_s() == pytest.approx(6 / 6)  # steps 2-7 in 6 s
