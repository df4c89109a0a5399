"""Data windows and the LR schedule: pure functions of (seed, step), so resumable and rank-independent."""

from __future__ import annotations

import math

import numpy as np
import torch

from autarky.train.batches import SequentialCursor, WindowSampler, make_train_sampler, source_spans
from autarky.train.schedule import lr_at

CPU = torch.device("cpu")


def _sampler(tokens: np.ndarray, dp_size: int, dp_rank: int, grad_accum: int = 1) -> WindowSampler:
    return WindowSampler(tokens, seq_len=16, batch_size=8, grad_accum=grad_accum, dp_size=dp_size,
                         dp_rank=dp_rank, seed=7)  # fmt: skip


def _rows(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> set[tuple[int, ...]]:
    return {tuple(x.tolist()) for inputs, _ in batches for x in inputs}


def test_ranks_and_micro_steps_partition_the_same_global_batch() -> None:
    tokens = np.arange(10_000, dtype=np.uint16)  # distinct ids, so a window identifies its start
    whole = _rows(_sampler(tokens, 1, 0).step_batches(3, CPU))
    assert len(whole) == 8
    parts = [_rows(_sampler(tokens, 2, r, grad_accum=2).step_batches(3, CPU)) for r in range(2)]
    assert not parts[0] & parts[1] and parts[0] | parts[1] == whole
    assert whole != _rows(_sampler(tokens, 1, 0).step_batches(4, CPU)), "each step draws new windows"


def test_targets_are_inputs_shifted_by_one() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    [(inputs, targets)] = _sampler(tokens, 1, 0).step_batches(1, CPU)
    assert inputs.shape == targets.shape == (8, 16) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1]) and torch.equal(targets[:, -1], inputs[:, -1] + 1)


def test_validation_windows_are_fixed_and_sharded() -> None:
    tokens = np.arange(10_000, dtype=np.uint16)
    one = _rows(_sampler(tokens, 1, 0).val_batches(2, CPU))
    assert one == _rows(_sampler(tokens, 1, 0).val_batches(2, CPU)) and len(one) == 16
    assert _rows(_sampler(tokens, 2, 0).val_batches(2, CPU)) | _rows(_sampler(tokens, 2, 1).val_batches(2, CPU)) == one


def test_warmup_then_cosine_to_the_floor() -> None:
    kw = dict(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_at(1, **kw) == 0.1 and lr_at(10, **kw) == 1.0
    assert math.isclose(lr_at(60, **kw), 0.55) and math.isclose(lr_at(110, **kw), 0.1)
    decay = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def _cursor(tokens: np.ndarray, spans, dp_size: int = 1, dp_rank: int = 0, grad_accum: int = 1,
            batch_size: int = 8) -> SequentialCursor:
    return SequentialCursor(tokens, tuple(spans), seq_len=16, batch_size=batch_size, grad_accum=grad_accum,
                            dp_size=dp_size, dp_rank=dp_rank, seed=7)


def test_sequential_cursor_reads_every_window_once_per_epoch() -> None:
    tokens = np.arange(16 * 64 + 1, dtype=np.int64)  # 64 windows of 16 (+1 for the last target)
    cursor = _cursor(tokens, [(0, len(tokens), 1.0)])
    starts = np.concatenate([cursor.starts(step) for step in range(8)])  # 8 steps × 8 = one epoch
    assert sorted(starts.tolist()) == list(range(0, 16 * 64, 16))
    second = np.concatenate([cursor.starts(step) for step in range(8, 16)])
    assert sorted(second.tolist()) == sorted(starts.tolist()) and second.tolist() != starts.tolist()


def test_sequential_cursor_honours_mixture_weights_and_resumes_exactly() -> None:
    tokens = np.arange(100_000, dtype=np.int64)
    spans = [(0, 20_000, 0.7), (20_000, 100_000, 0.3)]  # the small source is upsampled to its weight
    cursor = _cursor(tokens, spans, batch_size=32)
    starts = np.concatenate([cursor.starts(step) for step in range(200)])
    share = float(np.mean(starts < 20_000))
    assert abs(share - 0.7) < 0.01  # low-discrepancy: far tighter than random sampling's ±0.005·√…
    fresh = _cursor(tokens, spans, batch_size=32)  # a new process after SIGKILL: the step is the whole state
    assert fresh.starts(137).tolist() == starts[137 * 32 : 138 * 32].tolist()
    whole = _rows(cursor.step_batches(5, CPU))
    parts = [_rows(_cursor(tokens, spans, 2, r, 2, 32).step_batches(5, CPU)) for r in range(2)]
    assert not parts[0] & parts[1] and parts[0] | parts[1] == whole


def test_source_spans_come_from_the_manifest(tiny_data_dir) -> None:
    from autarky.data import read_manifest

    manifest = read_manifest(tiny_data_dir)
    [(start, end, weight)] = source_spans(manifest)
    assert (start, end, weight) == (0, manifest["splits"]["train"]["tokens"], 1.0)
    sampler = make_train_sampler("sequential", np.zeros(end, dtype=np.uint16), manifest, seq_len=16, batch_size=4,
                                 grad_accum=1, dp_size=1, dp_rank=0, seed=1)
    assert isinstance(sampler, SequentialCursor)
    assert isinstance(make_train_sampler("random", np.zeros(end, dtype=np.uint16), None, seq_len=16, batch_size=4,
                                         grad_accum=1, dp_size=1, dp_rank=0, seed=1), WindowSampler)
