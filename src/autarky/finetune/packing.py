"""Examples → fixed-length training rows, and the loop's batch source over them.

A row holds one example (padded) or, packed, as many as fit (best-fit decreasing, deterministic): each keeps its
own positions (0, 1, ...) and a segment id, and the model's segment mask stops attention at example borders,
so a packed row computes exactly what its examples compute alone. Targets are -100 wherever nothing is trained
(prompt, other roles, padding); padding is never a trained token, whatever id the tokenizer pads with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from autarky.errors import UserError
from autarky.finetune.render import Example
from autarky.train.step import MicroBatch

IGNORE = -100
_PAD_SEGMENT = -1


@dataclass(frozen=True)
class Fitted:
    examples: list[Example]
    truncated: int
    dropped: int


def fit_to_length(examples: list[Example], seq_len: int, truncation: str) -> Fitted:
    """Examples cut to seq_len input positions under the config's rule: "error", "truncate" or "drop". A truncated
    example that keeps no trained target is dropped (and counted)."""
    kept, truncated, dropped = [], 0, 0
    for ex in examples:
        if ex.positions <= seq_len:
            kept.append(ex)
            continue
        if truncation == "error":
            raise UserError(f"{ex.record.where}: the example is {ex.positions} tokens, longer than seq_len "
                            f"{seq_len}; raise seq_len, or set data.truncation to 'truncate' or 'drop'")
        if truncation == "truncate" and any(ex.trained[1 : seq_len + 1]):
            kept.append(Example(ex.tokens[: seq_len + 1], ex.trained[: seq_len + 1], ex.record))
            truncated += 1
        else:
            dropped += 1
    return Fitted(kept, truncated, dropped)


@dataclass(frozen=True)
class Rows:
    inputs: np.ndarray  # (R, T) int64
    targets: np.ndarray  # (R, T) int64, IGNORE where untrained
    positions: np.ndarray  # (R, T) int64
    segments: np.ndarray  # (R, T) int64, _PAD_SEGMENT on padding

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())


def pack_rows(examples: list[Example], seq_len: int, packing: bool, pad_id: int) -> Rows:
    """One row per example, or examples packed best-fit decreasing into as few rows as fit."""
    bins: list[list[Example]] = []
    if packing:
        room: list[int] = []
        for ex in sorted(examples, key=lambda e: -e.positions):  # stable: ties keep file order
            fits = [i for i, free in enumerate(room) if free >= ex.positions]
            if fits:
                best = min(fits, key=lambda i: room[i])
                bins[best].append(ex)
                room[best] -= ex.positions
            else:
                bins.append([ex])
                room.append(seq_len - ex.positions)
    else:
        bins = [[ex] for ex in examples]
    shape = (len(bins), seq_len)
    rows = Rows(np.full(shape, pad_id, np.int64), np.full(shape, IGNORE, np.int64), np.zeros(shape, np.int64),
                np.full(shape, _PAD_SEGMENT, np.int64))  # fmt: skip
    for r, members in enumerate(bins):
        at = 0
        for segment, ex in enumerate(members):
            n = ex.positions
            rows.inputs[r, at : at + n] = ex.tokens[:-1]
            rows.targets[r, at : at + n] = [t if on else IGNORE for t, on in zip(ex.tokens[1:], ex.trained[1:],
                                                                                 strict=True)]  # fmt: skip
            rows.positions[r, at : at + n] = np.arange(n)
            rows.segments[r, at : at + n] = segment
            at += n
    return rows


class PackedBatches:
    """The loop's batch source over training and validation rows.

    Step s takes global rows (s-1)·B ... s·B-1 of an endless sequence of epochs, each a permutation seeded by
    (seed, epoch): a pure function of the step, so a resumed run sees the same rows and a 2-rank run the same
    global batch as 1 rank. Each micro-batch's weight makes the step's loss the mean over ALL its trained
    tokens, however they fall across micro-batches and ranks. Validation: the first rows of the held-out set,
    at most eval_batches global batches (cycled to fill the last one).
    """

    def __init__(self, train: Rows, val: Rows, *, batch_size: int, grad_accum: int, dp_size: int, dp_rank: int,
                 seed: int, eval_batches: int) -> None:  # fmt: skip
        self.train, self.val = train, val
        self.batch_size, self.grad_accum, self.dp_size, self.dp_rank = batch_size, grad_accum, dp_size, dp_rank
        self.seed, self.eval_batches = seed, eval_batches

    @functools.lru_cache(maxsize=4)  # noqa: B019 - one source per run, a few epochs alive at a time
    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.train))

    def step_rows(self, step: int) -> np.ndarray:
        """The global batch of optimizer step `step` (1-based): indices into the training rows."""
        n = len(self.train)
        index = np.arange((step - 1) * self.batch_size, step * self.batch_size)
        return np.array([self._epoch(int(i // n))[i % n] for i in index])

    def step_batches(self, step: int, device: torch.device) -> list[MicroBatch]:
        return self._micro_batches(self.train, self.step_rows(step), device)

    def val_batches(self, device: torch.device) -> list[MicroBatch]:
        n = len(self.val)
        if not n:
            return []
        batches = min(self.eval_batches, -(-n // self.batch_size))
        out: list[MicroBatch] = []
        for g in range(batches):
            rows = (np.arange(g * self.batch_size, (g + 1) * self.batch_size)) % n
            out.extend(self._micro_batches(self.val, rows, device))
        return out

    def _micro_batches(self, rows: Rows, global_rows: np.ndarray, device: torch.device) -> list[MicroBatch]:
        micro = self.batch_size // (self.grad_accum * self.dp_size)
        local = global_rows.reshape(self.grad_accum, self.dp_size, micro)[:, self.dp_rank]
        total = int((rows.targets[global_rows] != IGNORE).sum())  # trained tokens of the whole step
        out = []
        for chosen in local:
            targets = rows.targets[chosen]
            trained = np.flatnonzero(targets.reshape(-1) != IGNORE)
            weight = len(trained) * self.grad_accum * self.dp_size / total

            def put(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(a)).to(device)

            out.append(MicroBatch(put(rows.inputs[chosen]), put(targets), put(rows.positions[chosen]),
                                  put(rows.segments[chosen]), put(trained), weight))  # fmt: skip
        return out
