"""Bookkeeping of the paged KV cache (vLLM's block manager, in plain Python): which block holds what.

The cache's memory is `n_blocks` blocks of `block_size` positions, preallocated at start-up
(`autarky.serve.cache.PagedKVCache`); each sequence holds a block table (its blocks in position order). Blocks are
refcounted: the n choices of a request, and requests that start with the same text, share the blocks of their
common prefix.

Prefix caching: a full block is known by a chain hash, (parent block's hash, its token ids, the adapter), so a hash
names the whole prefix up to the block's end and a prefix is shared only within one base + adapter. A block whose
refcount drops to zero stays findable by its hash until the pool needs it: free blocks are reused least recently
freed first (LRU eviction), and the tail of a sequence is freed before its head, so shared heads live longest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

BlockKey = tuple[int | None, tuple[int, ...], Hashable]  # (parent hash, token ids, adapter)


@dataclass(frozen=True)
class PoolStats:
    blocks: int
    used: int  # held by a sequence (refcount > 0)
    cached: int  # free but still findable by hash

    @property
    def usage(self) -> float:
        return self.used / self.blocks if self.blocks else 0.0


def block_hashes(tokens: Sequence[int], block_size: int, adapter: Hashable = None,
                 start: list[int] | None = None) -> list[int]:  # fmt: skip
    """The chain hashes of every full block of `tokens`; `start` (hashes already known for its first blocks) is
    extended rather than recomputed."""
    hashes = list(start or ())
    for i in range(len(hashes), len(tokens) // block_size):
        parent = hashes[-1] if hashes else None
        hashes.append(hash((parent, tuple(tokens[i * block_size : (i + 1) * block_size]), adapter)))
    return hashes


class BlockPool:
    def __init__(self, n_blocks: int, block_size: int, caching: bool = True) -> None:
        self.n_blocks = n_blocks
        self.block_size = block_size
        self.caching = caching
        self.refs = [0] * n_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(n_blocks))  # eviction order: first out
        self._by_hash: dict[int, int] = {}
        self._hash_of: dict[int, int] = {}  # block -> its hash, for blocks that are findable

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (cached ones included: they are evicted on demand)."""
        return len(self._free)

    def stats(self) -> PoolStats:
        free_cached = sum(1 for b in self._free if b in self._hash_of)
        return PoolStats(self.n_blocks, self.n_blocks - len(self._free), free_cached)

    def allocate(self) -> int:
        """A fresh block (refcount 1), evicting the least recently freed cached block if it must."""
        block, _ = self._free.popitem(last=False)
        digest = self._hash_of.pop(block, None)
        if digest is not None:
            del self._by_hash[digest]
        self.refs[block] = 1
        return block

    def cached_prefix(self, hashes: Sequence[int]) -> list[int]:
        """The blocks of the longest cached run of `hashes` from the first (not yet acquired)."""
        found = []
        if self.caching:
            for digest in hashes:
                block = self._by_hash.get(digest)
                if block is None:
                    break
                found.append(block)
        return found

    def acquire(self, block: int) -> None:
        """One more holder of `block` (a cache hit, or a choice sharing its prompt)."""
        if self.refs[block] == 0:
            del self._free[block]
        self.refs[block] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one hold on each of `blocks`, tail first: of a sequence's blocks, the head is evicted last."""
        for block in reversed(blocks):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self._free[block] = None

    def register(self, block: int, digest: int) -> None:
        """Make the full `block` findable as `digest` (the first block to hold a prefix keeps it)."""
        if self.caching and digest not in self._by_hash and block not in self._hash_of:
            self._by_hash[digest] = block
            self._hash_of[block] = digest
