"""Packing: a packed row computes exactly what its examples compute alone; padding is never trained; batches are
a pure function of the step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autarky.errors import UserError
from autarky.finetune.packing import IGNORE, PackedBatches, fit_to_length, pack_rows
from autarky.finetune.records import read_records
from autarky.finetune.render import Example, Renderer
from autarky.model.hf import load_hf_folder
from autarky.train.step import batch_loss
from fixtures.finetune import chat, chats, write_jsonl


@pytest.fixture(scope="module")
def examples(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Example]:
    path = chats(tmp_path_factory.mktemp("packing") / "d.jsonl", 6)
    renderer = Renderer(tiny_hf_model_dir)
    return [renderer.encode(r) for r in read_records(path)]


def _loss(model: torch.nn.Module, rows, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    source = PackedBatches(rows, rows, batch_size=len(rows), grad_accum=1, dp_size=1, dp_rank=0, seed=0,
                           eval_batches=1)  # fmt: skip
    (batch,) = source._micro_batches(rows, np.arange(len(rows)), device)
    return batch_loss(model, batch)


def test_packed_loss_equals_unpacked_loss(tiny_hf_model_dir: Path, examples: list[Example]) -> None:
    model, _ = load_hf_folder(tiny_hf_model_dir)
    seq_len = 3 * max(e.positions for e in examples)
    packed = pack_rows(examples, seq_len, packing=True, pad_id=0)
    unpacked = pack_rows(examples, seq_len, packing=False, pad_id=0)
    assert len(packed) == 2 and len(unpacked) == 6
    assert packed.trained_tokens == unpacked.trained_tokens
    with torch.no_grad():
        assert abs(_loss(model, packed).item() - _loss(model, unpacked).item()) < 1e-5


def test_no_attention_across_examples_in_a_pack(tiny_hf_model_dir: Path, examples: list[Example]) -> None:
    model, _ = load_hf_folder(tiny_hf_model_dir)
    first, second = sorted(examples[:2], key=lambda e: -e.positions)  # packing puts the longer example first
    altered = Example([first.tokens[0], *[(t + 7) % 512 for t in first.tokens[1:]]], first.trained, first.record)
    seq_len = first.positions + second.positions + 5
    logits = []
    for head in (first, altered):
        rows = pack_rows([head, second], seq_len, packing=True, pad_id=0)
        assert len(rows) == 1
        with torch.no_grad():
            logits.append(model(torch.from_numpy(rows.inputs), positions=torch.from_numpy(rows.positions),
                                segments=torch.from_numpy(rows.segments))[0])  # fmt: skip
    a, n = first.positions, second.positions  # the altered head has the same length: the second stays put
    assert not torch.equal(logits[0][:a], logits[1][:a])
    assert torch.equal(logits[0][a : a + n], logits[1][a : a + n])
    with torch.no_grad():  # and it equals the second example alone
        alone = model(torch.tensor([second.tokens[:-1]]))[0]
    assert (logits[0][a : a + n] - alone).abs().max().item() < 1e-5


def test_padding_is_never_a_target_even_when_pad_is_the_end_token(examples: list[Example]) -> None:
    end = examples[0].tokens[-1]  # <|im_end|>'s neighbour: the id that ends every assistant turn here
    rows = pack_rows(examples, 200, packing=False, pad_id=end)
    pad = rows.segments == -1
    assert pad.any() and (rows.targets[pad] == IGNORE).all()
    assert sum(sum(e.trained[1:]) for e in examples) == rows.trained_tokens


def test_long_examples_error_truncate_or_drop(examples: list[Example]) -> None:
    longest = max(e.positions for e in examples)
    with pytest.raises(UserError, match="longer than seq_len"):
        fit_to_length(examples, longest - 1, "error")
    cut = fit_to_length(examples, longest - 1, "truncate")
    assert cut.truncated >= 1 and cut.dropped == 0 and all(e.positions <= longest - 1 for e in cut.examples)
    dropped = fit_to_length(examples, longest - 1, "drop")
    assert dropped.dropped == cut.truncated and len(dropped.examples) == len(examples) - dropped.dropped


def test_step_batches_are_a_function_of_the_step_and_weights_make_a_token_mean(examples: list[Example]) -> None:
    rows = pack_rows(examples, 200, packing=False, pad_id=0)

    def source(dp_rank: int, dp_size: int) -> PackedBatches:
        return PackedBatches(rows, rows, batch_size=4, grad_accum=1, dp_size=dp_size, dp_rank=dp_rank, seed=3,
                             eval_batches=1)  # fmt: skip

    one = source(0, 1)
    assert [one.step_rows(s).tolist() for s in (1, 2, 3)] == [source(0, 1).step_rows(s).tolist() for s in (1, 2, 3)]
    seen = np.concatenate([one.step_rows(s) for s in (1, 2, 3)])[:6]  # the first epoch: every row once
    assert sorted(seen.tolist()) == list(range(6))
    halves = [source(r, 2).step_batches(2, torch.device("cpu"))[0] for r in (0, 1)]
    # Rank r's mean loss S_r/n_r times its weight, averaged over ranks (as FSDP does), is sum(S_r) / sum(n_r).
    n = [len(b.trained) for b in halves]
    assert [b.weight for b in halves] == pytest.approx([2 * k / sum(n) for k in n])


def test_a_record_with_no_trained_token_left_is_dropped_when_truncated(tiny_hf_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x " * 80, "completion": "y"}, chat(0)])
    renderer = Renderer(tiny_hf_model_dir)
    fitted = fit_to_length([renderer.encode(r) for r in read_records(path)], 60, "truncate")
    assert fitted.dropped == 1 and len(fitted.examples) == 1
