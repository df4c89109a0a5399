"""Training a mixture of experts: `moe-nano` trains single-process through the one loop, metrics.jsonl records the
per-expert load, the imbalance and the (zero) dropped tokens, and the balancing bias is checkpointed."""

import json
from pathlib import Path

import torch

from autarky.train import train
from fixtures.train import single_thread, tiny_train_config


def _moe_run(data_dir: Path, out: Path, **overrides: object) -> list[dict]:
    cfg = tiny_train_config(data_dir, out, **{"model.preset": "moe-nano", "run.steps": 6, "data.batch_size": 4,
                                              "data.seq_len": 32, "run.eval_every": 3, **overrides})
    with single_thread():
        train(cfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_moe_nano_trains_and_logs_expert_load(tiny_data_dir: Path, tmp_path: Path) -> None:
    rows = _moe_run(tiny_data_dir, tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["loss"] < rows[0]["loss"]
    for row in rows:
        assert len(row["expert_load"]) == 8 and abs(sum(row["expert_load"]) - 1) < 1e-3
        assert row["expert_imbalance"] >= 1.0 and row["dropped_tokens"] == 0
    meta = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-6/meta.json")).read_text())
    assert meta["model"]["n_experts"] == 8 and meta["model"]["n_active_experts"] == 3

    from autarky.train import load_model_from_run

    model = load_model_from_run(tmp_path / "run")[0]
    biases = [b for name, b in model.named_buffers() if name.endswith("expert_bias")]
    assert len(biases) == 5 and any(b.abs().sum() > 0 for b in biases)  # moved and restored from the checkpoint


def test_aux_loss_trains_without_the_bias(tiny_data_dir: Path, tmp_path: Path) -> None:
    rows = _moe_run(tiny_data_dir, tmp_path / "run", **{"run.steps": 3, "model.balance_rate": 0.0,
                                                         "model.aux_loss_coef": 0.01})
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    from autarky.train import load_model_from_run

    model, cfg = load_model_from_run(tmp_path / "run")[:2]
    assert (cfg.balance_rate, cfg.aux_loss_coef) == (0.0, 0.01)
    assert all(not b.any() for name, b in model.named_buffers() if name.endswith("expert_bias"))
