"""The train step's pieces against their plain-PyTorch definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autarky.model.llama import Llama
from autarky.model.sizes import preset
from autarky.train.config import OptimSection
from autarky.train.parallelize import parallelize
from autarky.train.step import FusedCrossEntropy, build_optimizer, train_step, training_loss
from fixtures.train import single_thread


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_matches_torch_in_value_and_gradient(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(700, 3000, generator=gen) * 4).to(dtype)  # 700 rows: several blocks, a ragged last one
    targets = torch.randint(0, 3000, (700,), generator=gen)
    ours_in, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = FusedCrossEntropy.apply(ours_in, targets)
    ref = F.cross_entropy(ref_in.float(), targets)
    (ours * 3).backward()
    (ref * 3).backward()
    assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 1e-5
    tol = 1e-7 if dtype == torch.float32 else 5e-5  # gradients are at most 3/700
    assert ours_in.grad.dtype == dtype
    assert (ours_in.grad.float() - ref_in.grad.float()).abs().max().item() < tol


def test_gradient_accumulation_equals_one_big_batch() -> None:
    cfg = preset("nano", vocab_size=256, n_layers=2)
    gen = torch.Generator().manual_seed(1)
    window = torch.randint(0, 256, (8, 33), generator=gen)
    inputs, targets = window[:, :-1], window[:, 1:]
    results = []
    for split in (1, 4):
        model = Llama(cfg)
        model.init_weights(0)
        optimizer = build_optimizer(model, OptimSection(lr=1e-2))
        micro = list(zip(inputs.chunk(split), targets.chunk(split), strict=True))
        with single_thread():
            loss, grad_norm = train_step(model, optimizer, micro, grad_clip=0.5)
        results.append((loss.item(), grad_norm.item(), model.layers["0"].attention.wq.weight.detach().clone()))
    (loss1, norm1, w1), (loss4, norm4, w4) = results
    assert abs(loss1 - loss4) < 1e-6 and abs(norm1 - norm4) < 1e-5 and norm1 > 0.5  # clipping was active
    assert (w1 - w4).abs().max().item() < 1e-4  # an update is ~lr = 1e-2; Adam amplifies rounding in tiny grads


@pytest.mark.parametrize("compile_", [False, True])
def test_training_loss_matches_torch_in_value_and_gradient(compile_: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(96, 500, generator=gen) * 4).to(torch.bfloat16)  # bf16, as autocast hands it over
    targets = torch.randint(0, 500, (96,), generator=gen)
    ours_in, ref_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    with single_thread():
        ours = training_loss(compile_)(ours_in, targets)
        ours.backward()
    ref = F.cross_entropy(ref_in.float(), targets)
    ref.backward()
    assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 1e-5
    assert ours_in.grad.dtype == torch.bfloat16
    assert (ours_in.grad.float() - ref_in.grad.float()).abs().max().item() < 1e-4


@pytest.mark.slow
def test_compiled_train_step_follows_the_eager_one() -> None:
    """`--compile` (blocks and loss, the default on CUDA) takes the same optimisation path as eager."""
    cfg = preset("nano", vocab_size=256, n_layers=2)
    window = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(3))
    batch = [(window[:, :-1], window[:, 1:])]
    losses: dict[bool, list[float]] = {}
    for compile_ in (False, True):
        model = Llama(cfg)
        model.init_weights(0)
        parallelize(model, None, compile=compile_, bf16=False)
        optimizer, loss_fn = build_optimizer(model, OptimSection(lr=1e-2)), training_loss(compile_)
        with single_thread():
            losses[compile_] = [train_step(model, optimizer, batch, grad_clip=1.0, loss_fn=loss_fn)[0].item()
                                for _ in range(5)]  # fmt: skip
    assert losses[True][-1] < losses[True][0] - 0.5  # it learns the batch
    assert max(abs(a - b) for a, b in zip(losses[False], losses[True], strict=True)) < 1e-4
