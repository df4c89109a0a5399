"""A preallocated key/value cache with one slot per running sequence.

Slots are kept compact: the rows of a decode step are slots 0..B-1, so each layer reads a view of the cache
(no gather). Rows sit at different positions; the boolean mask hides each row's unused tail exactly (masked
scores get zero weight), which is why batched output equals unbatched output. The sequence axis grows on demand
so memory follows what is in use rather than max_batch × max_model_len.
"""

from __future__ import annotations

import torch

GROW_STEP = 256


class SlotKVCache:
    def __init__(
        self,
        n_layers: int,
        max_batch: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.max_len = max_len
        self.capacity = min(GROW_STEP, max_len)
        shape = (n_layers, max_batch, self.capacity, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._prefill_slot: int | None = None
        self._rows: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._batch = 0
        self._span = 0

    def reserve(self, length: int) -> None:
        """Make room for `length` positions per slot (grows in steps; never beyond max_len)."""
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise ValueError(f"length {length} exceeds the cache's max_len {self.max_len}")
        new_cap = min(self.max_len, -(-length // GROW_STEP) * GROW_STEP)
        for name in ("k", "v"):
            old = getattr(self, name)
            grown = old.new_zeros(*old.shape[:2], new_cap, *old.shape[3:])
            grown[:, :, : self.capacity] = old
            setattr(self, name, grown)
        self.capacity = new_cap

    def begin_prefill(self, slot: int, length: int) -> None:
        """The next forward writes B prompts of `length` tokens (padded) into slots slot..slot+B-1 from
        position 0."""
        self.reserve(length)
        self._prefill_slot = slot

    def begin_decode(self, positions: torch.Tensor) -> None:
        """The next forward writes one token per row b (slot b) at positions[b]."""
        span = int(positions.max()) + 1
        self.reserve(span)
        self._prefill_slot = None
        self._batch = positions.shape[0]
        self._span = span
        self._rows = torch.arange(self._batch, device=positions.device)
        self._positions = positions
        keys = torch.arange(span, device=positions.device)
        self._mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, S)

    @property
    def decoding(self) -> bool:
        """Whether the next forward is a decode step (one new token per row), not a prefill."""
        return self._prefill_slot is None and self._mask is not None

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self._prefill_slot is not None:
            slot, (batch, length) = self._prefill_slot, k.shape[:2]
            self.k[layer, slot : slot + batch, :length] = k
            self.v[layer, slot : slot + batch, :length] = v
            return k, v, None  # prompts from position 0 attend causally to themselves only
        self.k[layer].index_put_((self._rows, self._positions), k[:, 0])
        self.v[layer].index_put_((self._rows, self._positions), v[:, 0])
        return self.k[layer, : self._batch, : self._span], self.v[layer, : self._batch, : self._span], self._mask

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        if src != dst and length > 0:
            self.k[:, dst, :length] = self.k[:, src, :length]
            self.v[:, dst, :length] = self.v[:, src, :length]
