"""The serving KV cache: one pool of fixed-size blocks, preallocated at start-up (vLLM's paged layout).

Keys and values of position p of a sequence live at slot `table[p // block_size] * block_size + p % block_size`
of the pool; `autarky.serve.blocks.BlockPool` decides which blocks a sequence holds. Memory is the pool's and
nothing else: it is known at start-up and never grows.

Before each forward the engine says, per row, which positions the step writes (`begin`); every layer then stores
its new keys/values at their slots and attends over the row's whole context, gathered from the pool (decode steps on
CPU read the pool in place instead: `store`, autarky.serve.decode_kernels.paged_attention; fp32 ones write and
read it from C: `layer_slots`, autarky.serve.cpu_kernels). Rows are padded to the longest: padded queries write to a scratch block past the pool's end and padded keys
read from it, and the boolean mask hides them from every real query (masked scores get zero weight, which is why
batched output equals unbatched output). A step whose rows all start at position 0 attends to its own keys with
plain causal attention (no gather).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BLOCK_SIZE = 16  # positions per block (vLLM's default)
DEFAULT_KV_CACHE_GB = 1.0  # the pool when --kv-cache-gb is not given and max_batch x max_model_len needs more


def kv_cache_blocks(kv_cache_gb: float | None, bytes_per_block: int, max_batch: int, max_model_len: int) -> int:
    """Blocks in a pool of kv_cache_gb (default: the smaller of DEFAULT_KV_CACHE_GB and what max_batch sequences
    of max_model_len need); at least one."""
    need = max_batch * -(-max_model_len // BLOCK_SIZE)
    if kv_cache_gb is None:
        return max(1, min(need, int(DEFAULT_KV_CACHE_GB * 1e9) // bytes_per_block))
    return max(1, int(kv_cache_gb * 1e9) // bytes_per_block)


class PagedKVCache:
    def __init__(
        self,
        n_layers: int,
        n_blocks: int,
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.n_blocks = n_blocks
        self.block_size = block_size
        # One block more than the pool: the scratch block that padded positions write to and read from.
        # Uninitialised: a slot is read only after it is written (or masked and in the scratch block), and pages
        # the pool has not used yet take no memory.
        shape = (n_layers, (n_blocks + 1) * block_size, n_kv_heads, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.k[:, n_blocks * block_size :] = 0  # finite: padded keys are read (with zero weight)
        self.v[:, n_blocks * block_size :] = 0
        self.device = self.k.device
        self._write: torch.Tensor | None = None  # (B, T) slots of this step's new keys
        self._read: torch.Tensor | None = None  # (B, S) slots of every key a row attends to
        self._mask: torch.Tensor | None = None  # (B, 1, T, S)
        self._fresh = False  # every row starts at position 0: its keys are exactly this step's
        self._decoding = False

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @staticmethod
    def bytes_per_block(n_layers: int, block_size: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * n_layers * block_size * n_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def begin(self, tables: Sequence[Sequence[int]], starts: Sequence[int], lengths: Sequence[int]) -> None:
        """The next forward writes lengths[b] new tokens of row b at positions starts[b].. (row b's block table
        tables[b] covering them), padded to the longest."""
        T = max(lengths)
        S = max(s + n for s, n in zip(starts, lengths, strict=True))
        bs, scratch = self.block_size, self.n_blocks
        width = -(-S // bs)
        table = torch.tensor([list(t[:width]) + [scratch] * (width - len(t[:width])) for t in tables],
                             device=self.device)  # (B, W)
        slots = (table[:, :, None] * bs + torch.arange(bs, device=self.device)).flatten(1)[:, :S]  # (B, S)
        start = torch.tensor(starts, device=self.device)[:, None]
        end = start + torch.tensor(lengths, device=self.device)[:, None]
        keys = torch.arange(S, device=self.device)[None]
        slots = torch.where(keys < end, slots, scratch * bs + keys % bs)
        queries = start + torch.arange(T, device=self.device)[None]  # (B, T) positions
        self._write = torch.where(queries < end, slots.gather(1, queries.clamp(max=S - 1)),
                                  scratch * bs + queries % bs)
        self._fresh = not any(starts)
        self._decoding = T == 1
        self._read = slots
        # Key s is visible to the query at position q when s <= q (pads see real keys, so no row is all -inf).
        self._mask = None if self._fresh else (keys[:, None, :] <= queries[:, :, None])[:, None]  # (B, 1, T, S)

    @property
    def decoding(self) -> bool:
        """Whether the next forward is a decode step (one new token per row) over cached keys."""
        return self._decoding and not self._fresh

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        k_pool, v_pool, slots, mask = self.store(layer, k, v)
        if self._fresh:
            return k, v, None  # prompts from position 0 attend causally to themselves only
        return k_pool[slots], v_pool[slots], mask

    def store(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store this step's keys/values (B, T, K, E); return the layer's pools (N, K, E), the slots (B, S) each
        row attends to and the mask (B, 1, T, S): attention that reads the pool in place needs no gathered copy
        (autarky.serve.decode_kernels.paged_attention)."""
        k_pool, v_pool, write, read, mask = self.layer_slots(layer)
        k_pool[write] = k
        v_pool[write] = v
        return k_pool, v_pool, read, mask

    def layer_slots(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None,
                                               torch.Tensor | None]:  # fmt: skip
        """The layer's pools (N, K, E), the slots (B, T) this step writes, the slots (B, S) each row attends to
        and the mask (B, 1, T, S), for kernels that write the pool themselves (autarky.serve.cpu_kernels)."""
        assert self._write is not None and self._read is not None, "begin() first"
        return self.k[layer], self.v[layer], self._write, self._read, self._mask

    def copy_block(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of block src into block dst (a choice's own copy of a shared
        partial block)."""
        bs = self.block_size
        self.k[:, dst * bs : dst * bs + length] = self.k[:, src * bs : src * bs + length]
        self.v[:, dst * bs : dst * bs + length] = self.v[:, src * bs : src * bs + length]
