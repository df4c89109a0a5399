"""Expert parallelism with tensor parallelism (torchtitan's ETP=1): the ranks of a tp group split the routed rows
and send them to the ep group holding their experts. On a tp pair that is also the ep pair, and on a tp group of 4
split into two ep pairs (the pairs hold the same experts, so their gradients are averaged although dp is 1), the
loss and every gradient (attention and shared experts sharded, router replicated, routed experts) equal one
process's (torchrun jobs on gloo; this file is also their worker script). The trainer-level check (4 ranks,
dp × tp with ep, resumed with another ep) is in test_expert_parallel.py."""

from __future__ import annotations

from pathlib import Path

import pytest


def worker() -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from autarky.model.llama import Llama, ModelConfig
    from autarky.model.moe import aux_loss
    from autarky.train.expert_parallel import expert_parallel_degree
    from autarky.train.parallelize import parallelize

    dist.init_process_group("gloo")
    # Uneven rows per rank (15 tokens × top 3 = 45 routed rows: 23 + 22, or 12 + 12 + 12 + 9), a shared expert, a
    # dense first layer, and the classic balance and z losses so the router's gradient has all its terms.
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=4, ffn_dim=48, max_seq_len=32,
                      n_experts=4, n_active_experts=3, n_shared_experts=1, moe_ffn_dim=16, first_k_dense=1,
                      aux_loss_coef=0.1, z_loss_coef=0.01)  # fmt: skip
    reference = Llama(cfg)
    reference.init_weights(seed=0)
    model = Llama(cfg)
    model.load_state_dict(reference.state_dict())
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("dp", "tp"))
    expert_mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("edp", "ep"))
    parallelize(model, mesh, compile=False, bf16=False, expert_mesh=expert_mesh)
    assert expert_parallel_degree(model) == 2
    tokens = torch.randint(0, 64, (1, 15), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 64, (1, 15), generator=torch.Generator().manual_seed(2))

    def total_loss(m: torch.nn.Module) -> torch.Tensor:
        loss = m.loss(tokens, targets)
        return loss + aux_loss(m)

    expected = total_loss(reference)
    expected.backward()
    loss = total_loss(model)
    loss.backward()
    assert abs(loss.item() - expected.item()) < 1e-5, (loss.item(), expected.item())
    for (name, param), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
        assert (grad - ref.grad).abs().max().item() < 1e-5, name
    dist.destroy_process_group()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tp", [2, 4], ids=["ep-pair-is-tp-pair", "two-ep-pairs-in-a-tp-group"])
def test_expert_parallel_with_tensor_parallel_matches_one_process(tp: int) -> None:
    from fixtures.train import run_cli  # not at the top: this file is also the torchrun worker script

    job = run_cli(["torch.distributed.run", "--standalone", f"--nproc_per_node={tp}", str(Path(__file__))])
    assert job.returncode == 0, job.stderr[-3000:]


if __name__ == "__main__":
    worker()
