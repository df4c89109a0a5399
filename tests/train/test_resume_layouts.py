"""A checkpoint resumes under another parallel layout and continues the uninterrupted curve (to 1e-4).

AdamW's param groups depend on the layout (one fused call cannot mix DTensor meshes, so tensor parallelism adds
groups), so the optimizer state is saved keyed by parameter name, not group number. moe-nano hops
1 process → tp 2 ep 2 → ep 2 → tp 2 ep 2 → 1 process (every pair both ways); nano hops 1 process → tp 2 → 1.
The layouts with tp run over 2 gloo processes (each ep pair is the tp pair): they have the groups a 4-process
dp × tp run has, at half the cost. Old checkpoints (param groups saved by number) still load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from autarky.contracts.rundir import complete_checkpoints, find_checkpoint, read_meta, single_process_dcp
from autarky.errors import UserError
from autarky.model.llama import Llama, ModelConfig
from autarky.train import read_metrics, train
from autarky.train.checkpoint import load_checkpoint, save_checkpoint
from autarky.train.config import OptimSection
from autarky.train.parallelize import Topology
from autarky.train.step import build_optimizer
from fixtures.train import parity_config, single_thread, torchrun, write_config

TOL = 1e-4
MOE = {"model.preset": "moe-nano", "data.batch_size": 4, "data.seq_len": 32, "model.balance_rate": 0.05,
       "checkpoint.every": 1, "checkpoint.keep": 10}  # fmt: skip
CPU = Topology(rank=0, world=1, local_rank=0, local_world=1, tp=1, device=torch.device("cpu"))


def _keep_until(run: Path, step: int) -> None:
    """As if the run had stopped after `step`: later checkpoints are gone."""
    for ckpt in complete_checkpoints(run):
        if ckpt.step > step:
            shutil.rmtree(ckpt.path)


def _assert_same_curve(run: Path, reference: Path) -> list[dict]:
    rows, ref = read_metrics(run), read_metrics(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, 7))
    for got, want in zip(rows, ref, strict=True):
        assert abs(got["loss"] - want["loss"]) < TOL, (got["step"], got["world"], got["loss"], want["loss"])
        assert abs(got.get("val_loss", 0.0) - want.get("val_loss", 0.0)) < TOL, got["step"]
    return rows


def _torchrun(nproc: int, config: Path, args: list[str]) -> None:
    job = torchrun(nproc, config, args=args)
    assert job.returncode == 0, job.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_moe_resumes_across_tensor_and_expert_parallel_layouts(tiny_data_dir: Path, tmp_path: Path) -> None:
    reference, out = tmp_path / "reference", tmp_path / "run"
    with single_thread():
        train(parity_config(tiny_data_dir, reference, **MOE))  # checkpoints 1-6
    shutil.copytree(reference, out)
    _keep_until(out, 1)
    config = write_config(parity_config(tiny_data_dir, out, **MOE), tmp_path / "run.toml")
    _torchrun(2, config, ["--tp", "2", "--ep", "2"])  # 1 process → tp 2 ep 2, from step 1
    _keep_until(out, 2)
    _torchrun(2, config, ["--ep", "2"])  # tp 2 ep 2 → ep 2, from step 2
    _keep_until(out, 3)
    _torchrun(2, config, ["--tp", "2", "--ep", "2"])  # ep 2 → tp 2 ep 2, from step 3
    _keep_until(out, 4)
    with single_thread():
        train(parity_config(tiny_data_dir, out, **{**MOE, "checkpoint.resume": "auto"}))  # → 1 process, from 4
    rows = _assert_same_curve(out, reference)
    assert [r["world"] for r in rows] == [1, 2, 2, 2, 1, 1]
    assert [read_meta(c).get("ep") for c in complete_checkpoints(out)] == [1, 2, 2, 2, 1, 1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dense_resumes_from_one_process_to_tp2_and_back(parity_run: Path, tiny_data_dir: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "run"
    shutil.copytree(parity_run, out)
    _keep_until(out, 3)
    every_step = {"checkpoint.every": 1, "checkpoint.keep": 10}
    _torchrun(2, write_config(parity_config(tiny_data_dir, out, **every_step), tmp_path / "run.toml"), ["--tp", "2"])
    _keep_until(out, 4)
    with single_thread():
        train(parity_config(tiny_data_dir, out, **{**every_step, "checkpoint.resume": "auto"}))
    rows = _assert_same_curve(out, parity_run)
    assert [r["world"] for r in rows] == [1, 1, 1, 2, 1, 1]


def _stepped(weight_decay: float = 0.1, seed: int = 0, frozen: str = "") -> tuple[Llama, torch.optim.Optimizer]:
    """A tiny model and its AdamW after one step (so every trained parameter has moments)."""
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=48, max_seq_len=16)
    model = Llama(cfg)
    model.init_weights(seed=seed)
    for name, param in model.named_parameters():
        param.requires_grad_(name != frozen)
    optimizer = build_optimizer(model, OptimSection(weight_decay=weight_decay))
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed))
    model.loss(tokens[:, :-1], tokens[:, 1:]).backward()
    optimizer.step()
    return model, optimizer


def _moments(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [optimizer.state[p]["exp_avg"] for group in optimizer.param_groups for p in group["params"]]


def test_a_checkpoint_with_param_groups_saved_by_number_still_resumes(tmp_path: Path) -> None:
    saved, saved_opt = _stepped()
    path = tmp_path / "checkpoints" / "step-1"
    model_sd, optim_sd = get_state_dict(saved, saved_opt)  # the nested form checkpoints had before
    with single_process_dcp():
        dcp.save({"model": model_sd, "optim": optim_sd, "train": json.dumps({"step": 1})},
                 storage_writer=dcp.FileSystemWriter(path))  # fmt: skip
    (path / "meta.json").write_text(json.dumps({"step": 1}))
    model, optimizer = _stepped(weight_decay=0.05, seed=1)
    assert load_checkpoint(find_checkpoint(tmp_path), model, optimizer, CPU) == {"step": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), saved.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(_moments(optimizer), _moments(saved_opt), strict=True))
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}  # the config's, not the checkpoint's


def test_a_checkpoint_lacking_a_trained_parameter_is_one_error_line(tmp_path: Path) -> None:
    saved, saved_opt = _stepped(frozen="tok_embeddings.weight")  # no optimizer state for it
    save_checkpoint(tmp_path, 1, saved, saved_opt, {"step": 1}, {}, CPU, keep=1)
    model, optimizer = _stepped(seed=1)
    with pytest.raises(UserError, match="cannot resume from .*step-1: Missing key .*tok_embeddings") as err:
        load_checkpoint(find_checkpoint(tmp_path), model, optimizer, CPU)
    assert "\n" not in str(err.value)
