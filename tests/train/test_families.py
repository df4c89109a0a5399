"""Training the open families' shapes: a Qwen3-shaped preset trains, resumes its pinned config and exports to a
folder transformers loads as Qwen3 with our logits; tensor parallel over the family features (q/k/v/o biases
sharded with their weights, Qwen3's per-head q/k norms replicated with gradients summed over the tp group) gives one
process's loss and gradients (a 2-rank torchrun job on gloo, ~20 s; this file is also its worker script)."""

from __future__ import annotations

from pathlib import Path

import pytest


def worker() -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from autarky.model.config import ModelConfig
    from autarky.model.llama import Llama
    from autarky.train.parallelize import parallelize

    dist.init_process_group("gloo")
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32,
                      head_dim=12, qkv_bias=True, wo_bias=True, qk_norm=True, family="qwen3")
    reference = Llama(cfg)
    reference.init_weights(seed=0)
    with torch.no_grad():
        for param in reference.parameters():  # biases and norm weights away from their 0 / 1 init
            param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    model = Llama(cfg)
    model.load_state_dict(reference.state_dict())
    mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))
    parallelize(model, mesh, compile=False, bf16=False)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    expected = reference.loss(tokens, targets)
    expected.backward()
    loss = model.loss(tokens, targets)
    loss.backward()
    assert abs(loss.item() - expected.item()) < 1e-5, (loss.item(), expected.item())
    for (name, param), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
        assert (grad - ref.grad).abs().max().item() < 1e-5, name
    dist.destroy_process_group()


def test_a_family_preset_trains_and_exports_as_its_family(tiny_data_dir: Path, tmp_path: Path) -> None:
    import torch
    import transformers

    from autarky.export.hf_folder import export_run
    from autarky.train import load_model_from_run, read_metrics, train
    from fixtures.train import single_thread, tiny_train_config

    shape = {"model.preset": "qwen3-0.6b", "model.dim": 64, "model.n_layers": 2, "model.n_heads": 4,
             "model.n_kv_heads": 2, "model.ffn_dim": 96, "run.steps": 4}
    with single_thread():
        train(tiny_train_config(tiny_data_dir, tmp_path / "run", **shape))
    assert len(read_metrics(tmp_path / "run")) == 4
    model, cfg, _, _ = load_model_from_run(tmp_path / "run")
    assert (cfg.family, cfg.qk_norm, cfg.head_dim, cfg.tie_embeddings) == ("qwen3", True, 128, True)
    folder, _ = export_run(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    tokens = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(tokens).logits - model(tokens)).abs().max().item() <= 1e-4


@pytest.mark.timeout(300)
def test_tensor_parallel_with_biases_and_qk_norm_matches_one_process() -> None:
    from fixtures.train import run_cli  # not at the top: this file is also the torchrun worker script

    job = run_cli(["torch.distributed.run", "--standalone", "--nproc_per_node=2", str(Path(__file__))])
    assert job.returncode == 0, job.stderr[-3000:]


if __name__ == "__main__":
    worker()
