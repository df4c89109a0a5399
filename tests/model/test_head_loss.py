"""The head fused with its cross-entropy a block of rows at a time against the plain head + F.cross_entropy."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from autarky.adapters import LoraConfig, apply_lora
from autarky.model import head_loss
from autarky.model.head_loss import linear_cross_entropy
from autarky.model.llama import Llama, ModelConfig
from autarky.model.moe import aux_loss
from autarky.train.config import OptimSection
from autarky.train.step import FusedCrossEntropy, MicroBatch, build_optimizer, fp32_cross_entropy, train_step


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 7 rows (vocab 300, fp32) and 2 rows per cache pass: several blocks and a ragged last one."""
    monkeypatch.setitem(head_loss.HEAD_BLOCK_BYTES, "cpu", 7 * 300 * 4)
    monkeypatch.setitem(head_loss._CACHE_BYTES, "cpu", 2 * 300 * 4)


@pytest.mark.parametrize("weight_trained", [True, False])
def test_blocked_loss_and_gradients_equal_the_whole_logits_ones(small_blocks: None, weight_trained: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(45, 24, generator=gen, dtype=torch.float64).float()
    weight = torch.randn(300, 24, generator=gen) * 0.5
    targets = torch.randint(0, 300, (45,), generator=gen)
    ours_h, ref_h = h.clone().requires_grad_(), h.clone().requires_grad_()
    ours_w, ref_w = weight.clone().requires_grad_(weight_trained), weight.clone().requires_grad_(weight_trained)
    ours = linear_cross_entropy(ours_h, ours_w, targets)
    ref = F.cross_entropy(ref_h @ ref_w.T, targets)
    (ours * 3).backward()
    (ref * 3).backward()
    assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 1e-5 and ref.item() > 1.0
    assert (ours_h.grad - ref_h.grad).abs().max().item() < 1e-6
    if weight_trained:
        assert (ours_w.grad - ref_w.grad).abs().max().item() < 1e-6
    else:
        assert ours_w.grad is None
    with torch.no_grad():  # evaluation: losses only
        assert abs(linear_cross_entropy(h, weight, targets).item() - ref.item()) < 1e-5


def test_bf16_autocast_computes_the_head_in_bf16_and_the_loss_in_fp32(small_blocks: None) -> None:
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(30, 24, generator=gen).requires_grad_()
    weight = torch.randn(300, 24, generator=gen) * 0.5
    targets = torch.randint(0, 300, (30,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, weight, targets)
    ours.backward()
    ref_h = h.detach().clone().requires_grad_()
    ref = F.cross_entropy((ref_h.bfloat16() @ weight.bfloat16().T).float(), targets)
    ref.backward()
    assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 1e-3
    assert h.grad.dtype == torch.float32
    assert (h.grad - ref_h.grad).abs().max().item() < 2e-3  # bf16 matmul of the gradient (~1e-2 relative)


CFG = ModelConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32,
                  tie_embeddings=True)  # fmt: skip
MOE = replace(CFG, n_experts=4, n_active_experts=2, moe_ffn_dim=16, first_k_dense=1, aux_loss_coef=0.01,
              z_loss_coef=0.01)  # fmt: skip


def _micro_batches(seed: int) -> list[MicroBatch]:
    """Packed-looking rows: two examples per row, a third of the positions trained."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 300, (2, 25), generator=gen)
    segments = (torch.arange(24) >= 10).long().expand(2, 24)
    positions = torch.cat([torch.arange(10), torch.arange(14)]).expand(2, 24)
    trained = torch.arange(0, 48, 3)
    return [MicroBatch(tokens[:, :-1], tokens[:, 1:], positions, segments, trained, 1.0),
            MicroBatch(tokens[:, 1:], tokens[:, :-1], positions, segments, trained + 1, 1.0)]


@pytest.mark.parametrize(("cfg", "method"), [(CFG, "lora"), (CFG, "full"), (MOE, "full")], ids=["lora", "full", "moe"])
def test_train_steps_follow_the_whole_logits_path(small_blocks: None, cfg: ModelConfig, method: str) -> None:
    """LoRA (frozen tied head), full fine-tuning (trained tied head) and an MoE with z-loss and the auxiliary
    balance loss: five steps through the fused head (the eager default) give the losses, grad norms and weights of
    whole logits and F.cross_entropy."""
    runs = []
    for loss_fn in (fp32_cross_entropy, FusedCrossEntropy.apply):
        model = Llama(cfg)
        model.init_weights(seed=0)
        if method == "lora":
            apply_lora(model, LoraConfig(rank=4, alpha=8), seed=0)
        model.train()
        optimizer = build_optimizer(model, OptimSection(lr=1e-2))
        steps = [train_step(model, optimizer, _micro_batches(0), grad_clip=1.0, loss_fn=loss_fn)
                 for _ in range(5)]  # fmt: skip
        model(_micro_batches(0)[0].inputs)
        balance = aux_loss(model)  # the trained model's balance + z losses (on for the MoE)
        runs.append(([(loss.item(), norm.item()) for loss, norm in steps], balance,
                     [p.detach().clone() for p in model.parameters() if p.requires_grad]))
    (old, old_balance, old_params), (new, new_balance, new_params) = runs
    assert old[-1][0] < old[0][0] - 0.05  # it learns
    for (old_loss, old_norm), (new_loss, new_norm) in zip(old, new, strict=True):
        assert abs(old_loss - new_loss) < 1e-5 and abs(old_norm - new_norm) < 1e-5
    # an update is ~lr = 1e-2 and Adam amplifies rounding in tiny gradients (as in tests/train/test_step.py)
    assert max((a - b).abs().max().item() for a, b in zip(old_params, new_params, strict=True)) < 1e-4
    if cfg.n_experts:
        assert old_balance is not None and abs(old_balance.item() - new_balance.item()) < 1e-6
