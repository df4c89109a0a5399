"""Training batches: deterministic random windows over the token memmap, sharded by data-parallel rank, or a
sequential mixture-aware cursor over the sources of a data dir (`[data] order = "sequential"`).

The windows of optimizer step s are drawn from a generator seeded by (seed, s) for the whole GLOBAL batch,
then split by micro-step and data-parallel rank. So the data position is just the step number (restorable
exactly), and a 2-rank run sees the same global batch as a 1-rank run. Windows cross document boundaries
(id 0 separates documents), as in nanoGPT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

_VAL_STREAM = 0xFFFF_FFFF  # a generator key no training step uses


@dataclass(frozen=True)
class WindowSampler:
    tokens: np.ndarray  # 1-D memmap of token ids
    seq_len: int
    batch_size: int  # global sequences per optimizer step
    grad_accum: int
    dp_size: int
    dp_rank: int
    seed: int

    @property
    def micro_batch(self) -> int:
        """Sequences per micro-step on this rank."""
        return self.batch_size // (self.grad_accum * self.dp_size)

    def _starts(self, stream: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=count)  # (count,)

    def _local(self, starts: np.ndarray) -> np.ndarray:
        """This rank's windows, shaped (grad_accum, micro_batch)."""
        return starts.reshape(self.grad_accum, self.dp_size, self.micro_batch)[:, self.dp_rank]

    def _windows(self, starts: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.tokens, self.seq_len, starts, device)

    def step_batches(self, step: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (inputs, targets) of each micro-step of optimizer step `step` on this rank."""
        local = self._local(self._starts(step, self.batch_size))
        return [self._windows(micro, device) for micro in local]

    def val_batches(self, n_batches: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed validation windows (same every evaluation), n_batches global batches' worth."""
        starts = self._starts(_VAL_STREAM, n_batches * self.batch_size).reshape(n_batches, -1)
        return [self._windows(micro, device) for batch in starts for micro in self._local(batch)]


_GOLDEN = (5**0.5 - 1) / 2  # slot k draws source by frac(k·φ): counts stay within O(log k) of the weights


def source_spans(manifest: dict) -> list[tuple[int, int, float]]:
    """(start, end, weight) of each source's tokens in train.bin, from a data manifest (documents in shard order).

    A build writes each source's tasks one after another, so every source is one contiguous span.
    """
    spans: dict[str, list[int]] = {}
    position = 0
    for doc in manifest["documents"]:
        if doc["split"] != "train":
            continue
        span = spans.setdefault(doc.get("source", "corpus"), [position, position])
        if span[1] != position:
            raise ValueError(f"source {doc.get('source')!r} is not contiguous in train.bin; rebuild the data dir")
        position += doc["tokens"] + 1
        span[1] = position
    weights = {name: info["weight"] for name, info in manifest.get("sources", {}).items()}
    return [(start, end, weights.get(name, 1.0)) for name, (start, end) in spans.items()]


@dataclass(frozen=True)
class SequentialCursor:
    """Windows read source by source in a fixed order: every token of a source once per epoch, weights honoured.

    Global window slot k (step·batch_size + j) goes to the source whose share of [0, 1) contains frac(k·φ), a
    low-discrepancy sequence, so each source gets its weight's share of every stretch of slots. A source's n-th
    window is window (a·i + b) mod W of epoch n // W, i = n mod W: an affine bijection (a coprime to W, a and b
    drawn from (seed, source, epoch)), so an epoch visits all W non-overlapping windows exactly once without a
    permutation table. Everything is a pure function of the step: resuming at step s is exact, and each rank
    takes its slice of the same global batch, as WindowSampler does.
    """

    tokens: np.ndarray
    spans: tuple[tuple[int, int, float], ...]  # (start, end, weight) per source; weights sum to 1
    seq_len: int
    batch_size: int
    grad_accum: int
    dp_size: int
    dp_rank: int
    seed: int

    @property
    def micro_batch(self) -> int:
        return self.batch_size // (self.grad_accum * self.dp_size)

    def _sources(self, slots: np.ndarray) -> np.ndarray:
        bounds = np.cumsum([w for _, _, w in self.spans])
        bounds[-1] = 1.0 + 1e-12
        return np.searchsorted(bounds, np.modf(slots * _GOLDEN)[0], side="right")

    def _taken_before(self, first_slot: int) -> np.ndarray:
        """Windows each source gave to slots [0, first_slot), counted in chunks (exact resume at any step)."""
        counts = np.zeros(len(self.spans), dtype=np.int64)
        for lo in range(0, first_slot, 1 << 22):
            slots = np.arange(lo, min(lo + (1 << 22), first_slot), dtype=np.float64)
            counts += np.bincount(self._sources(slots), minlength=len(self.spans))
        return counts

    def _window_start(self, source: int, n: int) -> int:
        start, end, _ = self.spans[source]
        windows = max((end - start - 1) // self.seq_len, 1)
        epoch, i = divmod(n, windows)
        rng = np.random.default_rng([self.seed, source, epoch])
        a, b = int(rng.integers(1, 1 << 62)) | 1, int(rng.integers(0, 1 << 62))
        while math.gcd(a, windows) != 1:
            a += 2
        return start + ((a * i + b) % windows) * self.seq_len

    def starts(self, step: int) -> np.ndarray:
        """Window starts of the whole global batch of optimizer step `step`, shape (batch_size,)."""
        first = step * self.batch_size
        taken = self._taken_before(first)
        sources = self._sources(np.arange(first, first + self.batch_size, dtype=np.float64))
        out = np.empty(self.batch_size, dtype=np.int64)
        for j, source in enumerate(sources):
            out[j] = self._window_start(int(source), int(taken[source]))
            taken[source] += 1
        return out

    def step_batches(self, step: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (inputs, targets) of each micro-step of optimizer step `step` on this rank."""
        local = self.starts(step).reshape(self.grad_accum, self.dp_size, self.micro_batch)[:, self.dp_rank]
        return [_windows(self.tokens, self.seq_len, micro, device) for micro in local]


def _windows(tokens: np.ndarray, seq_len: int, starts: np.ndarray, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    batch = torch.from_numpy(rows)  # (b, T+1)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    return batch[:, :-1], batch[:, 1:]  # inputs, targets: (b, T) each


def make_train_sampler(order: str, tokens: np.ndarray, manifest: dict | None, **common: int
                       ) -> WindowSampler | SequentialCursor:
    """The training sampler `[data] order` asks for: "random" windows, or the "sequential" mixture cursor."""
    if order == "sequential":
        spans = source_spans(manifest) if manifest is not None else [(0, len(tokens), 1.0)]
        return SequentialCursor(tokens, tuple(spans), **common)
    return WindowSampler(tokens, **common)
