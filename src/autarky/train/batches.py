"""Training batches: deterministic random windows over the token memmap, sharded by data-parallel rank.

The windows of optimizer step s are drawn from a generator seeded by (seed, s) for the whole GLOBAL batch,
then split by micro-step and data-parallel rank. So the data position is just the step number (restorable
exactly), and a 2-rank run sees the same global batch as a 1-rank run. Windows cross document boundaries
(id 0 separates documents), as in nanoGPT.
"""

from __future__ import annotations

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
        rows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        batch = torch.from_numpy(rows)  # (b, T+1)
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]  # inputs, targets: (b, T) each

    def step_batches(self, step: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (inputs, targets) of each micro-step of optimizer step `step` on this rank."""
        local = self._local(self._starts(step, self.batch_size))
        return [self._windows(micro, device) for micro in local]

    def val_batches(self, n_batches: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed validation windows (same every evaluation), n_batches global batches' worth."""
        starts = self._starts(_VAL_STREAM, n_batches * self.batch_size).reshape(n_batches, -1)
        return [self._windows(micro, device) for batch in starts for micro in self._local(batch)]
