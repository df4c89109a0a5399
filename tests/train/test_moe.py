"""Training a mixture of experts: `moe-nano` trains single-process through the one loop, metrics.jsonl records the
per-expert load, the imbalance and the (zero) dropped tokens, and the balancing bias is checkpointed."""

import json
from pathlib import Path

import torch

from autarky.train import train
from fixtures.train import single_thread, tiny_train_config


def _moe_run(data_dir: Path, out: Path, **overrides: object) -> list[dict]:
    cfg = tiny_train_config(data_dir, out, **{"model.preset": "moe-nano", "run.steps": 6, "data.batch_size": 4,
                                              "data.seq_len": 32, "run.eval_every": 3, "checkpoint.every": 3,
                                              **overrides})
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


def test_resume_continues_with_the_same_losses_and_balance(tiny_data_dir: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    fast = {"model.balance_rate": 0.05}  # a bias that changes routing within a few steps
    reference = [(r["step"], r["loss"], r["expert_load"]) for r in _moe_run(tiny_data_dir, out, **fast)]
    shutil.rmtree(out / "checkpoints" / "step-6")  # as if killed after step 5: checkpoint 3 is the newest
    resumed = _moe_run(tiny_data_dir, out, **fast, **{"checkpoint.resume": "auto"})
    assert [(r["step"], r["loss"], r["expert_load"]) for r in resumed] == reference  # exactly, routing included


def test_aux_loss_trains_without_the_bias(tiny_data_dir: Path, tmp_path: Path) -> None:
    rows = _moe_run(tiny_data_dir, tmp_path / "run", **{"run.steps": 3, "model.balance_rate": 0.0,
                                                         "model.aux_loss_coef": 0.01})
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    from autarky.train import load_model_from_run

    model, cfg = load_model_from_run(tmp_path / "run")[:2]
    assert (cfg.balance_rate, cfg.aux_loss_coef) == (0.0, 0.01)
    assert all(not b.any() for name, b in model.named_buffers() if name.endswith("expert_bias"))


_EP_SCRIPT = r'''
import sys
from dataclasses import replace

import torch
import torch.distributed as dist

from autarky.model.config import ModelConfig
from autarky.model.llama import Llama
from torch.distributed.device_mesh import init_device_mesh

from autarky.train.expert_parallel import apply_expert_parallel

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, out = dist.get_rank(), sys.argv[1]
cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32,
                  n_experts=8, n_active_experts=3, n_shared_experts=1, moe_ffn_dim=16, first_k_dense=1)
model = Llama(cfg)
model.init_weights(seed=0)
apply_expert_parallel(model, init_device_mesh("cpu", (2,), mesh_dim_names=("ep",)))
experts = model.layers["1"].feed_forward.experts
assert experts.w1.shape[0] == 8 and experts.w1.to_local().shape[0] == 4  # half the experts each
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
losses = []
for step in range(4):  # each rank its own tokens, as data-parallel ranks have
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(100 * step + rank))
    loss = model.loss(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    for p in model.parameters():  # replicated weights: average over ranks (FSDP would); experts: already averaged
        if p.grad is not None and not any(p is w for w in experts.parameters()):
            dist.all_reduce(p.grad)
            p.grad /= 2
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
torch.save(losses, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
'''


def test_expert_parallel_over_two_gloo_processes_matches_ep1(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from autarky.model.config import ModelConfig
    from autarky.model.llama import Llama

    script = tmp_path / "ep.py"
    script.write_text(_EP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script), str(tmp_path)], check=True, env=env, timeout=240, capture_output=True)
    # EP=1: one process, the two ranks' batches as data parallelism would average them.
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32,
                      n_experts=8, n_active_experts=3, n_shared_experts=1, moe_ffn_dim=16, first_k_dense=1)
    model = Llama(cfg)
    model.init_weights(seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    expected: list[list[float]] = [[], []]
    with single_thread():
        for step in range(4):
            total = 0
            for rank in range(2):
                tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(100 * step + rank))
                loss = model.loss(tokens[:, :-1], tokens[:, 1:])
                expected[rank].append(loss.item())
                total = total + loss / 2
            total.backward()
            optimizer.step()
            optimizer.zero_grad()
    assert expected[0][0] != expected[0][-1]  # the weights moved: later losses test the updates too
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert max(abs(a - b) for a, b in zip(got, expected[rank], strict=True)) < 1e-4


def test_z_loss_adds_the_mean_squared_logsumexp_of_the_router_logits() -> None:
    from dataclasses import replace

    from autarky.model.config import ModelConfig
    from autarky.model.llama import Llama
    from autarky.model.moe import aux_loss, moe_layers
    from autarky.train.step import batch_loss

    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32,
                      n_experts=8, n_active_experts=3, n_shared_experts=1, moe_ffn_dim=16, first_k_dense=1)
    tokens = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(3))
    batch = (tokens[:, :-1], tokens[:, 1:])

    def objective(coef: float) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        model = Llama(replace(cfg, z_loss_coef=coef))
        model.init_weights(seed=0)  # the same weights for both coefficients
        model.train()
        router_in: list[torch.Tensor] = []
        for layer in moe_layers(model).values():
            layer.router.register_forward_hook(lambda m, args, out: router_in.append(out.detach()))
        ce = batch_loss(model, batch)
        extra = aux_loss(model)
        total = ce if extra is None else ce + extra
        total.backward()
        router_grad = model.layers["1"].feed_forward.router.weight.grad.clone()
        return total.detach(), router_in, router_grad

    plain, logits, plain_grad = objective(0.0)
    coef = 0.5
    with_z, _, z_grad = objective(coef)
    assert len(logits) == 2  # one sparse layer's router each, dense first layer
    # z_loss = coef · Σ_layers mean_tokens(logsumexp(router logits)²), ST-MoE eq. 5, computed here by hand.
    expected = coef * sum((torch.log(torch.exp(z.double()).sum(-1)) ** 2).mean() for z in logits)
    assert abs((with_z - plain).item() - expected.item()) < 1e-5
    assert expected.item() > 1e-3
    assert not torch.allclose(plain_grad, z_grad)  # the router is trained by it


def test_z_loss_from_the_config_trains(tiny_data_dir: Path, tmp_path: Path) -> None:
    rows = _moe_run(tiny_data_dir, tmp_path / "run", **{"run.steps": 3, "model.z_loss_coef": 0.001})
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    from autarky.train import load_model_from_run

    assert load_model_from_run(tmp_path / "run")[1].z_loss_coef == 0.001


def test_a_trained_moe_nano_exports_with_its_balancing_bias(tiny_data_dir: Path, tmp_path: Path) -> None:
    """train → `autarky export` → transformers: the trained router bias travels (GLM-4.5's
    e_score_correction_bias) and transformers routes every token as we do (logits to 1e-4)."""
    import transformers
    from typer.testing import CliRunner

    from autarky.cli import app
    from autarky.train import load_model_from_run

    _moe_run(tiny_data_dir, tmp_path / "run", **{"model.balance_rate": 0.05})
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    ours, cfg, _, _ = load_model_from_run(tmp_path / "run")
    assert any(b.abs().max() > 0 for name, b in ours.named_buffers() if name.endswith("expert_bias"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.model_type == "glm4_moe"
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4
