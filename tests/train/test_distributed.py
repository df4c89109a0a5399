"""torchrun jobs on gloo: FSDP2 (compiled) and FSDP2×TP match one process; a killed worker is restarted and resumes.

Each torchrun job costs ~15-30 s of launcher and import time on 2 cores, so each job checks several things.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autarky.train import load_model_from_run, read_metrics
from fixtures.train import parity_config, torchrun, write_config

TOL = 1e-4


def _assert_same_curve(run: Path, reference: Path) -> list[dict]:
    rows, ref = read_metrics(run), read_metrics(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, 7))
    for got, want in zip(rows, ref, strict=True):
        assert abs(got["loss"] - want["loss"]) < TOL, (got["step"], got["loss"], want["loss"])
        assert abs(got.get("val_loss", 0.0) - want.get("val_loss", 0.0)) < TOL
    return rows


@pytest.mark.slow
def test_fsdp2_two_ranks_compiled_match_one_and_resume_after_a_worker_is_killed(
    parity_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # Compiled blocks and loss under fully_shard: the default on CUDA, checked here on gloo against eager.
    cfg = parity_config(tiny_data_dir, out, **{"parallel.compile": True})
    config = write_config(cfg, tmp_path / "run.toml")
    # Rank 1 SIGKILLs itself after step 5 on the first attempt; torchrun restarts both workers, which resume
    # from checkpoint 3 and replay steps 4-6.
    job = torchrun(2, config, env={"AUTARKY_CRASH_AT_STEP": "5"})
    assert job.returncode == 0, job.stderr[-3000:]
    rows = _assert_same_curve(out, parity_run)
    assert [r["restart"] for r in rows] == [0, 0, 0, 1, 1, 1]  # steps 4-6 come from the restarted attempt
    assert all(r["world"] == 2 for r in rows)


@pytest.mark.slow
def test_fsdp2_by_tensor_parallel_2x2_with_grad_accum_matches_one_process(
    parity_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = parity_config(tiny_data_dir, out, **{"parallel.tp": 2, "data.grad_accum": 2})
    job = torchrun(4, write_config(cfg, tmp_path / "run.toml"))
    assert job.returncode == 0, job.stderr[-3000:]
    _assert_same_curve(out, parity_run)
    # The sharded (dp × tp) checkpoint loads into one plain process and agrees with the reference weights.
    sharded, _, _, step = load_model_from_run(out)
    plain, _, _, ref_step = load_model_from_run(parity_run)
    assert step == ref_step == 6
    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (sharded(tokens) - plain(tokens)).abs().max().item() < TOL
