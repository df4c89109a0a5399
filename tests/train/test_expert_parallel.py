"""`autarky train --ep N`: expert parallelism through the trainer. moe-nano with --ep 2 over 2 gloo processes
(experts Shard(0) over the pair, the rest FSDP2) follows the single-process curve, resumes exactly after a worker
is killed, and its checkpoint resumes under another EP degree with the same curve (DCP reshards the experts).
With --tp 2 --ep 2 over 4 processes (dp 2 × tp 2, each tp pair splitting the experts and the routed rows) it follows
the same curve too, and its checkpoint resumes with the experts split over all 4.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from autarky.contracts.rundir import complete_checkpoints, find_checkpoint, read_meta
from autarky.train import load_model_from_run, read_metrics, train
from fixtures.train import parity_config, single_thread, torchrun, write_config

TOL = 1e-4
# A fast balancing bias, so routing changes within the 6 steps and the all-reduced token counts matter.
MOE = {"model.preset": "moe-nano", "data.batch_size": 4, "data.seq_len": 32, "model.balance_rate": 0.05}


def _moe_config(data_dir: Path, out: Path, **overrides: object):  # noqa: ANN202
    return parity_config(data_dir, out, **{**MOE, **overrides})


def _assert_same_curve(run: Path, reference: Path, steps: list[int]) -> list[dict]:
    rows, ref = read_metrics(run), read_metrics(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == steps
    for got, want in zip(rows, ref, strict=True):
        assert abs(got["loss"] - want["loss"]) < TOL, (got["step"], got["loss"], want["loss"])
        assert abs(got.get("val_loss", 0.0) - want.get("val_loss", 0.0)) < TOL
        # Loads are global (counts all-reduced over every rank): one rank's own counts differ by 0.03-0.14 here; a
        # single token routed otherwise (a float near-tie) moves a layer-averaged share by 5e-4.
        assert max(abs(a - b) for a, b in zip(got["expert_load"], want["expert_load"], strict=True)) < 1e-3
    return rows


@pytest.fixture(scope="module")
def moe_reference(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """moe-nano in one process (EP 1): 6 steps, checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("moe-ref") / "run"
    with single_thread():
        train(_moe_config(tiny_data_dir, out))
    return out


@pytest.fixture(scope="module")
def ep2_run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`torchrun --nproc_per_node=2 -m autarky train --ep 2`; rank 1 SIGKILLs itself after step 5 on the first
    attempt, torchrun restarts both workers, which resume from checkpoint 3 and replay steps 4-6."""
    tmp = tmp_path_factory.mktemp("moe-ep2")
    config = write_config(_moe_config(tiny_data_dir, tmp / "run"), tmp / "run.toml")
    job = torchrun(2, config, env={"AUTARKY_CRASH_AT_STEP": "5"}, args=["--ep", "2"])
    assert job.returncode == 0, job.stderr[-3000:]
    return tmp / "run", job.stderr


@pytest.mark.slow
def test_ep2_over_two_processes_matches_ep1_and_resumes_after_a_kill(ep2_run: tuple[Path, str],
                                                                    moe_reference: Path) -> None:  # fmt: skip
    run, _ = ep2_run
    rows = _assert_same_curve(run, moe_reference, list(range(1, 7)))
    assert [r["restart"] for r in rows] == [0, 0, 0, 1, 1, 1]  # steps 4-6 come from the restarted attempt
    assert all(r["world"] == 2 and r["dropped_tokens"] == 0 for r in rows)
    assert "ep = 2" in (run / "config.toml").read_text()
    assert read_meta(find_checkpoint(run)).get("ep") == 2  # the experts were split (FSDP alone gives these losses too)
    # The sharded checkpoint (experts split over the pair) loads into one plain process: the reference's weights.
    sharded, _, _, step = load_model_from_run(run)
    plain = load_model_from_run(moe_reference)[0]
    assert step == 6
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (sharded(tokens) - plain(tokens)).abs().max().item() < TOL
    biases = {n: b for n, b in sharded.named_buffers() if n.endswith("expert_bias")}
    ref_biases = {n: b for n, b in plain.named_buffers() if n.endswith("expert_bias")}
    assert any(b.abs().sum() > 0 for b in biases.values())
    assert all(torch.equal(biases[n], ref_biases[n]) for n in ref_biases)  # every rank moved the same bias


@pytest.mark.slow
def test_an_ep2_checkpoint_resumes_in_one_process_with_ep1(ep2_run: tuple[Path, str], moe_reference: Path,
                                                          tiny_data_dir: Path, tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "run"
    shutil.copytree(ep2_run[0], out)
    shutil.rmtree(out / "checkpoints" / "step-6")  # as if stopped after step 5: checkpoint 3 is the newest
    with single_thread():
        train(_moe_config(tiny_data_dir, out, **{"checkpoint.resume": "auto"}))
    rows = _assert_same_curve(out, moe_reference, list(range(1, 7)))
    assert [r["world"] for r in rows] == [2, 2, 2, 1, 1, 1]


@pytest.mark.slow
def test_an_ep1_checkpoint_resumes_with_ep2_over_two_processes(moe_reference: Path, tiny_data_dir: Path,
                                                              tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "run"
    shutil.copytree(moe_reference, out)
    shutil.rmtree(out / "checkpoints" / "step-6")
    config = write_config(_moe_config(tiny_data_dir, out), tmp_path / "run.toml")
    job = torchrun(2, config, args=["--ep", "2"])
    assert job.returncode == 0, job.stderr[-3000:]
    rows = _assert_same_curve(out, moe_reference, list(range(1, 7)))
    assert [r["world"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert [read_meta(c).get("ep") for c in complete_checkpoints(out)] == [1, 2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ep2_with_tp2_over_four_processes_matches_ep1_and_resumes_with_ep4(moe_reference: Path, tiny_data_dir: Path,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "run"
    config = write_config(_moe_config(tiny_data_dir, out), tmp_path / "run.toml")
    # Each ep pair is a tp pair: the two ranks of a data-parallel rank split its routed rows and the experts.
    job = torchrun(4, config, args=["--tp", "2", "--ep", "2"])
    assert job.returncode == 0, job.stderr[-3000:]
    rows = _assert_same_curve(out, moe_reference, list(range(1, 7)))
    assert all(r["world"] == 4 and r["dropped_tokens"] == 0 for r in rows)
    assert read_meta(find_checkpoint(out)).get("ep") == 2
    # Resumed with the experts over all 4 ranks (an ep group spanning both tp pairs): DCP reshards them.
    shutil.rmtree(out / "checkpoints" / "step-6")
    job = torchrun(4, config, args=["--tp", "2", "--ep", "4"])
    assert job.returncode == 0, job.stderr[-3000:]
    _assert_same_curve(out, moe_reference, list(range(1, 7)))
    assert [read_meta(c).get("ep") for c in complete_checkpoints(out)] == [2, 4]
