"""Activation checkpointing: a memory/compute trade that changes no number, no parameter name, no checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from autarky.adapters import LoraConfig, apply_lora, lora_parameters
from autarky.cli import app
from autarky.model.llama import Llama
from autarky.model.sizes import preset
from autarky.train import read_metrics, train
from autarky.train.checkpoint import complete_checkpoints
from autarky.train.parallelize import parallelize
from fixtures.train import losses, parity_config, single_thread

MODES = ("none", "full", "selective")
TOKENS = torch.randint(0, 256, (3, 33), generator=torch.Generator().manual_seed(4))


def _model(mode: str, *, lora: bool = False) -> Llama:
    torch.manual_seed(0)
    model = Llama(preset("nano", vocab_size=256, n_layers=3))
    model.init_weights(0)
    if lora:
        # Dropout on: recomputation must replay the same mask for the gradients to match.
        apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.2), seed=0)
        with torch.no_grad():  # B = 0 would leave A without gradient
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    model.train()
    return parallelize(model, None, compile=False, bf16=False, activation_checkpointing=mode)  # type: ignore[return-value]


def _loss_and_grads(model: Llama) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the dropout masks' stream
    with single_thread():
        segments = torch.tensor([0] * 20 + [1] * 12).expand(3, 32)  # packed rows, as fine-tuning feeds them
        logits = model(TOKENS[:, :-1], segments=segments)
        loss = F.cross_entropy(logits.flatten(0, 1), TOKENS[:, 1:].flatten())
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("lora", [False, True], ids=["train", "lora"])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(lora: bool) -> None:
    ref_loss, ref_grads = _loss_and_grads(_model("none", lora=lora))
    assert ref_grads and all(g.abs().sum() > 0 for g in ref_grads.values())
    for mode in MODES[1:]:
        loss, grads = _loss_and_grads(_model(mode, lora=lora))
        assert abs(loss - ref_loss) < 1e-6, mode
        assert grads.keys() == ref_grads.keys(), mode
        for name, g in grads.items():
            assert (g - ref_grads[name]).abs().max().item() < 1e-6, (mode, name)


def test_parameter_names_do_not_change() -> None:
    plain = _model("none", lora=True)
    for mode in MODES[1:]:
        model = _model(mode, lora=True)
        assert model.state_dict().keys() == plain.state_dict().keys()
        assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
        assert lora_parameters(model).keys() == lora_parameters(plain).keys()


def test_evaluation_under_no_grad_is_unchanged() -> None:
    with torch.no_grad(), single_thread():
        plain, checkpointed = _model("none").eval()(TOKENS), _model("full").eval()(TOKENS)
    assert torch.equal(plain, checkpointed)


@pytest.mark.slow
def test_a_run_resumes_across_the_switch(parity_run: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    """Checkpoint 3 of a run without AC, resumed with it, logs the uninterrupted run's losses."""
    out = tmp_path / "run"
    shutil.copytree(parity_run, out)
    shutil.rmtree(complete_checkpoints(out)[-1].path)  # back to step 3
    with single_thread():
        summary = train(parity_config(tiny_data_dir, out, **{"checkpoint.resume": "auto",
                                                             "parallel.activation_checkpointing": "full"}))
    assert summary.step == 6
    resumed, reference = losses(read_metrics(out)), losses(read_metrics(parity_run))
    assert [s for s, _ in resumed] == [s for s, _ in reference] == list(range(1, 7))
    assert max(abs(a - b) for (_, a), (_, b) in zip(resumed, reference, strict=True)) < 1e-5


def test_the_flag_is_on_train_and_finetune() -> None:
    runner = CliRunner()
    for command in ("train", "finetune"):
        help_text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert "--activation-checkpointing" in help_text, command
    bad = runner.invoke(app, ["train", "--activation-checkpointing", "some"])
    assert bad.exit_code != 0 and "activation_checkpointing" in bad.output


@pytest.mark.slow
def test_compiled_checkpointed_blocks_follow_the_eager_ones() -> None:
    """AC goes on before block.compile() (torchtitan's order); the compiled, checkpointed step matches eager."""
    eager_loss, eager_grads = _loss_and_grads(_model("none"))
    torch.manual_seed(0)
    model = Llama(preset("nano", vocab_size=256, n_layers=3))
    model.init_weights(0)
    parallelize(model, None, compile=True, bf16=False, activation_checkpointing="full")
    loss, grads = _loss_and_grads(model)
    assert abs(loss - eager_loss) < 1e-5
    assert max((g - eager_grads[n]).abs().max().item() for n, g in grads.items()) < 1e-5
