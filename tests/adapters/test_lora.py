"""LoraLinear and the module swap: step 0 equals the base, merge equals unmerged, only adapters train."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from autarky.adapters import LoraConfig, LoraLinear, apply_lora, lora_parameters, merge_lora
from autarky.model.config import ModelConfig
from autarky.model.llama import Llama

CFG = ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64)


def _model(seed: int = 0) -> Llama:
    model = Llama(CFG)
    model.init_weights(seed=seed)
    return model.eval()


def _tokens() -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))


def _randomise_b(model: nn.Module, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in lora_parameters(model).items():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def test_targets_accept_our_names_hf_names_and_all_linear() -> None:
    assert LoraConfig(targets=["q_proj", "wv", "down_proj"]).targets == ("wq", "wv", "w2")
    assert LoraConfig(targets="all-linear").targets == ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    assert LoraConfig(targets=("up_proj", "w3")) == LoraConfig(targets=("w3",))
    assert LoraConfig(targets=["gate_proj"]).hf_targets == ["gate_proj"]
    assert LoraConfig(rank=4, alpha=8).scaling == 2.0
    assert LoraConfig(rank=4, alpha=8, use_rslora=True).scaling == 4.0
    with pytest.raises(ValidationError, match="unknown LoRA target module 'lm_head'"):
        LoraConfig(targets=["lm_head"])
    for bad in ({"rank": 0}, {"rank": -2}, {"alpha": 0}, {"dropout": 1.0}, {"targets": []}):
        with pytest.raises(ValidationError):
            LoraConfig(**bad)


def test_zero_init_adapter_equals_base_and_freezes_everything_else() -> None:
    model = _model()
    tokens = _tokens()
    with torch.no_grad():
        base = model(tokens)
    apply_lora(model, LoraConfig(rank=4, alpha=8), seed=0)
    with torch.no_grad():
        assert torch.equal(model(tokens), base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = lora_parameters(model)
    assert trainable == set(adapters) and len(adapters) == 2 * 7 * CFG.n_layers
    wq = model.layers["0"].attention.wq
    assert isinstance(wq, LoraLinear) and not wq.training  # follows the eval-mode model: no dropout at inference
    assert adapters["layers.0.attention.wq.lora_A"].shape == (4, CFG.dim)  # (r, in)
    assert adapters["layers.0.attention.wq.lora_B"].shape == (CFG.n_heads * CFG.head_dim, 4)  # (out, r)
    assert "layers.0.attention.wq.weight" in model.state_dict()  # base names unchanged
    assert not isinstance(model.output, LoraLinear)
    assert lora_parameters(torch.compile(model)).keys() == adapters.keys()  # wrapper prefixes dropped
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, LoraConfig())


def test_only_the_chosen_targets_are_swapped() -> None:
    model = apply_lora(_model(), LoraConfig(targets=["q_proj", "v_proj"]))
    assert set(lora_parameters(model)) == {f"layers.{i}.attention.{m}.lora_{w}" for i in range(2)
                                           for m in ("wq", "wv") for w in "AB"}
    assert type(model.layers["1"].feed_forward.w1) is nn.Linear


def test_merged_equals_unmerged_and_restores_plain_linears() -> None:
    model = apply_lora(_model(), LoraConfig(rank=4, alpha=8), seed=0)
    _randomise_b(model)
    tokens = _tokens()
    with torch.no_grad():
        adapted = model(tokens)
        merged = merge_lora(model)(tokens)
    assert (adapted - merged).abs().max().item() <= 1e-4
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert set(model.state_dict()) == set(_model().state_dict())


def test_merge_sums_in_fp32_for_a_bf16_base() -> None:
    base = nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    lora = LoraLinear(base, rank=4, alpha=1.0)
    assert lora.lora_A.dtype == torch.float32  # adapters stay fp32 whatever the base dtype
    with torch.no_grad():
        lora.lora_B.fill_(1e-3)
    merged = lora.merged()
    expected = (base.weight.float() + (lora.lora_B @ lora.lora_A) * lora.scaling).to(torch.bfloat16)
    assert merged.weight.dtype == torch.bfloat16 and torch.equal(merged.weight, expected)


def test_lora_linear_keeps_the_base_bias() -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 8, bias=True)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        expected = base(x)
    lora = LoraLinear(base, rank=2, alpha=4.0)
    assert lora.bias is base.bias and not lora.bias.requires_grad
    with torch.no_grad():
        assert torch.equal(lora(x), expected)
        lora.lora_B.normal_()
        out = lora(x)
        merged = lora.merged()
        assert (merged(x) - out).abs().max().item() <= 1e-5 and merged.bias is base.bias


def test_training_moves_only_the_adapters() -> None:
    model = apply_lora(_model(), LoraConfig(rank=4, alpha=8, dropout=0.1), seed=0)
    before = {n: t.clone() for n, t in model.state_dict().items() if "lora_" not in n}
    adapters = lora_parameters(model)
    start = {n: t.detach().clone() for n, t in adapters.items()}
    optimizer = torch.optim.AdamW(adapters.values(), lr=1e-2, weight_decay=0.1)
    tokens = _tokens()
    model.train()
    losses = []
    for _ in range(4):
        loss = model.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in before.items())
    assert all(not torch.equal(adapters[n].detach(), t) for n, t in start.items() if n.endswith("lora_B"))
    assert losses[-1] < losses[0]


def test_int8_base_is_close_to_the_fp32_base_and_trainable() -> None:
    fp32 = apply_lora(_model(), LoraConfig(rank=4, alpha=8), seed=0)
    int8 = apply_lora(_model(), LoraConfig(rank=4, alpha=8, base_int8=True), seed=0)
    _randomise_b(fp32)
    _randomise_b(int8)
    wq = int8.layers["0"].attention.wq
    assert wq.quantized and wq.weight is None and wq.weight_int8.dtype == torch.int8
    assert wq.weight_scale.shape == (wq.out_features,)
    tokens = _tokens()
    with torch.no_grad():
        a, b = fp32(tokens), int8(tokens)
    # Per-channel int8 rounds each weight by at most scale/2 (≤ 0.4% of the row's largest weight); through two
    # random blocks the logits move by ~0.5% of their largest value here; 2% leaves room across platforms.
    assert (a - b).abs().max().item() <= 2e-2 * a.abs().max().item()
    adapters = lora_parameters(int8)
    assert {n for n, p in int8.named_parameters() if p.requires_grad} == set(adapters)
    optimizer = torch.optim.SGD(adapters.values(), lr=0.1)
    loss = int8.loss(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    optimizer.step()
    assert int8.loss(tokens[:, :-1], tokens[:, 1:]).item() < loss.item()
    merged = merge_lora(int8)
    assert merged.layers["0"].attention.wq.weight.dtype == torch.float32


def test_lora_linear_compiles_with_the_same_output_and_gradients() -> None:
    torch.manual_seed(0)
    lora = LoraLinear(nn.Linear(32, 16), rank=4, alpha=8.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(2, 3, 32)
    eager = lora(x)
    eager.square().sum().backward()
    grads = [lora.lora_A.grad.clone(), lora.lora_B.grad.clone()]
    lora.zero_grad()
    compiled = torch.compile(lora, backend="aot_eager", fullgraph=True)(x)
    compiled.square().sum().backward()
    assert torch.allclose(compiled, eager, atol=1e-6)
    assert all(torch.allclose(g, p.grad, atol=1e-5) for g, p in zip(grads, (lora.lora_A, lora.lora_B), strict=True))
