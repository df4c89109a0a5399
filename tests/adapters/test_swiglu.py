"""SwiGLUDown: the same values and gradients as the plain feed-forward, with half its saved activations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autarky.adapters import LoraConfig, apply_lora, fuse_swiglu, lora_parameters
from autarky.model.config import ModelConfig
from autarky.model.llama import Llama

CFG = ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64)
TOKENS = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))


def _model(lora: LoraConfig | None, bias: bool = False) -> Llama:
    model = Llama(CFG)
    model.init_weights(seed=0)
    if bias:
        for block in model.layers.values():
            w2 = block.feed_forward.w2
            w2.bias = nn.Parameter(torch.randn(CFG.dim) * 0.1)
    if lora is not None:
        apply_lora(model, lora, seed=1)
        generator = torch.Generator().manual_seed(11)
        with torch.no_grad():  # a non-zero B, so the adapter path counts in values and gradients
            for name, param in lora_parameters(model).items():
                if name.endswith("lora_B"):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.train()


def _grads(model: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = model(TOKENS)
    logits.square().mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [None, LoraConfig(rank=4, alpha=8), LoraConfig(rank=4, alpha=8, base_int8=True),
                                  LoraConfig(rank=4, alpha=8, targets=("w2",))])  # fmt: skip
@pytest.mark.parametrize("bias", [False, True])
def test_same_values_and_gradients_as_the_plain_feed_forward(lora: LoraConfig | None, bias: bool) -> None:
    plain = _model(lora, bias)
    fused = copy.deepcopy(plain)
    assert fuse_swiglu(fused) == CFG.n_layers
    want, want_grads = _grads(plain)
    got, got_grads = _grads(fused)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys() and want_grads
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _saved_bytes(model: nn.Module) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randint(0, CFG.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))).sum()
    return sum(seen.values())


def test_it_keeps_two_of_the_four_hidden_sized_tensors() -> None:
    plain = _model(LoraConfig(rank=4, alpha=8))
    fused = copy.deepcopy(plain)
    fuse_swiglu(fused)
    hidden = 4 * 64 * CFG.ffn_dim * 4  # one (tokens, ffn_dim) fp32 tensor
    assert _saved_bytes(plain) - _saved_bytes(fused) == pytest.approx(2 * hidden * CFG.n_layers, rel=0.02)


def test_lora_dropout_keeps_the_plain_form_and_a_merge_falls_back() -> None:
    from autarky.adapters import merge_lora

    dropped = _model(LoraConfig(rank=4, alpha=8, dropout=0.1))
    assert fuse_swiglu(dropped) == 0
    model = _model(LoraConfig(rank=4, alpha=8))
    fuse_swiglu(model)
    with torch.no_grad():
        before = model.eval()(TOKENS)
        assert torch.allclose(merge_lora(model)(TOKENS), before, atol=1e-5)
