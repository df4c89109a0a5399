"""LoRA under FSDP2: frozen base and trainable adapters in one fully_shard unit, gradients as without FSDP."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from autarky.adapters import LoraConfig, apply_lora, lora_parameters, save_adapter
from autarky.model.config import ModelConfig
from autarky.model.llama import Llama

CFG = ModelConfig(vocab_size=128, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32)


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A world of one on gloo, in this process (an in-memory store: no port, nothing left behind)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("base_int8", [False, True])
def test_fully_sharded_lora_trains_like_the_plain_model(one_process_group: None, tmp_path: Path, base_int8: bool) -> None:
    model = Llama(CFG)
    model.init_weights(seed=0)
    apply_lora(model, LoraConfig(rank=4, alpha=8, base_int8=base_int8), seed=0)
    with torch.no_grad():
        for name, param in lora_parameters(model).items():
            if name.endswith("lora_B"):
                param.normal_(std=0.05)
    plain = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (1,))
    for block in model.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    tokens = torch.randint(0, CFG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    losses = []
    for m in (plain, model):
        loss = m.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    sharded, reference = lora_parameters(model), lora_parameters(plain)
    assert sharded.keys() == reference.keys()
    for name, param in sharded.items():
        assert torch.allclose(param.grad.full_tensor(), reference[name].grad, atol=1e-6), name
    assert all(p.grad is None for n, p in model.named_parameters() if n not in sharded)
    saved = load_file(str(save_adapter(model, LoraConfig(rank=4, alpha=8), tmp_path, "tiny")
                          / "adapter_model.safetensors"))
    assert len(saved) == len(sharded)
