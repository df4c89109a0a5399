"""The run-directory contract on hand-made run dirs (no training): checkpoints, metrics, the steady state."""

from __future__ import annotations

import json

import pytest

from autarky.contracts.rundir import (
    WARMUP_ROWS,
    complete_checkpoints,
    find_checkpoint,
    is_run_dir,
    pinned_model_config,
    read_metrics,
    read_run_config,
    steady_state,
)
from autarky.errors import UserError


def make_run(tmp_path, steps=(10, 20), mfus=(0.01, 0.02, 0.05, 0.10, 0.12, 0.11, 0.50)):
    run = tmp_path / "run"
    for step in steps:
        ckpt = run / "checkpoints" / f"step-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / ".metadata").write_bytes(b"")
        (ckpt / "meta.json").write_text(json.dumps({"step": step}))
    (run / "checkpoints" / "step-30.tmp").mkdir()  # a save that never finished
    rows = [{"step": i + 1, "mfu": m, "tokens_per_s": 1000 * m} for i, m in enumerate(mfus)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "mf')
    (run / "config.toml").write_text('[model]\npreset = "nano"\n')
    return run


def test_checkpoints_and_layout(tmp_path):
    run = make_run(tmp_path)
    assert is_run_dir(run) and not is_run_dir(tmp_path)
    assert [c.step for c in complete_checkpoints(run)] == [10, 20]
    assert find_checkpoint(run).step == 20 and find_checkpoint(run, 10).step == 10
    with pytest.raises(UserError, match="available steps: 10, 20"):
        find_checkpoint(run, 30)


def test_metrics_and_the_steady_state(tmp_path):
    run = make_run(tmp_path)
    rows = read_metrics(run)
    assert len(rows) == 7  # the torn last line is skipped
    steady = steady_state(rows)
    assert [r["step"] for r in steady.rows] == [4, 5, 6, 7] and WARMUP_ROWS == 3
    assert steady.mfu == pytest.approx(0.115) and steady.tokens_per_s == pytest.approx(115)
    assert steady_state(rows[:2]).mfu == 0.02  # too few rows: the latest alone
    with pytest.raises(UserError, match="does not exist"):
        read_metrics(tmp_path)


def test_run_config_and_pinned_shape(tmp_path):
    run = make_run(tmp_path)
    config = read_run_config(run)
    assert pinned_model_config(config["model"]) is None  # a preset alone pins no shape
    shape = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64)
    assert pinned_model_config({"preset": "nano", **shape}).dim == 64
    with pytest.raises(ValueError):
        pinned_model_config({**shape, "n_heads": 3})
    assert read_run_config(tmp_path) == {}


def test_pinned_shape_keeps_the_presets_family_features():
    """A Qwen3 run pins only its shape; the planner must still see Qwen3's own head width and q/k norms."""
    from autarky.model.sizes import preset
    from autarky.train.config import ModelSection

    qwen = preset("qwen3-0.6b", vocab_size=512, max_seq_len=64)
    table = ModelSection.pinned("qwen3-0.6b", qwen).model_dump(exclude_none=True)
    cfg = pinned_model_config(table)
    assert cfg == qwen
    assert cfg.head_dim == 128 != cfg.dim // cfg.n_heads and cfg.qk_norm
