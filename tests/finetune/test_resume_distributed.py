"""The train stage's guarantees, for fine-tuning: SIGKILL-and-resume logs exactly the uninterrupted losses, and a
2-process FSDP2 LoRA job on gloo matches one process."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from autarky.finetune import finetune
from autarky.train import read_metrics
from autarky.train.checkpoint import complete_checkpoints
from fixtures.finetune import chats, tiny_finetune_config, write_finetune_config
from fixtures.train import losses, run_cli

LORA = {"model.method": "lora", "data.batch_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chats(tmp_path_factory.mktemp("ft-data") / "chats.jsonl", 12)


@pytest.fixture(scope="module")
def reference(tiny_hf_model_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted single-process LoRA run (in this process)."""
    out = tmp_path_factory.mktemp("ft-ref") / "run"
    finetune(tiny_finetune_config(tiny_hf_model_dir, data, out, **LORA))
    return out


@pytest.mark.slow
def test_sigkill_then_resume_logs_exactly_the_uninterrupted_losses(
        reference: Path, tiny_hf_model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = write_finetune_config(tiny_finetune_config(tiny_hf_model_dir, data, out, **LORA), tmp_path / "ft.toml")
    killed = run_cli(["autarky", "finetune", "--config", str(config)], env={"AUTARKY_CRASH_AT_STEP": "5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [c.step for c in complete_checkpoints(out)] == [3]

    resumed = run_cli(["autarky", "finetune", "--config", str(config), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "step 6" in resumed.stdout and "0 truncated" in resumed.stdout
    assert losses(read_metrics(out)) == losses(read_metrics(reference))  # exactly: same bits
    assert [r["val_loss"] for r in read_metrics(out) if "val_loss" in r] == \
        [r["val_loss"] for r in read_metrics(reference) if "val_loss" in r]


@pytest.mark.slow
def test_fsdp2_two_ranks_lora_match_one_process(reference: Path, tiny_hf_model_dir: Path, data: Path,
                                                tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = write_finetune_config(tiny_finetune_config(tiny_hf_model_dir, data, out, **LORA), tmp_path / "ft.toml")
    job = run_cli(["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "autarky", "finetune",
                   "--config", str(config)])  # fmt: skip
    assert job.returncode == 0, job.stderr[-3000:]
    rows, ref = read_metrics(out), read_metrics(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, 7))
    for got, want in zip(rows, ref, strict=True):
        assert got["world"] == 2
        assert abs(got["loss"] - want["loss"]) < 1e-4, (got["step"], got["loss"], want["loss"])
        assert abs(got.get("val_loss", 0.0) - want.get("val_loss", 0.0)) < 1e-4
