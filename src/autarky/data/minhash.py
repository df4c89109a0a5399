"""Near-duplicate removal: MinHash signatures per task, then one global LSH pass over all of them (datasketch).

Shingles are FineWeb's: word 5-grams of the lower-cased text with punctuation removed. Words are hashed once
(crc32, stable across processes, unlike `hash`) and the n-gram hashes are combined with numpy, so the Python
loop is per word, not per shingle and permutation; datasketch applies its permutations vectorised.

Memory of the global pass: datasketch's in-memory MinHashLSH keeps, per kept document, one key per band
(rows × 8 bytes) in `bands` hash tables — about 2.5 kB per document at 14×8, plus the
signature (num_perm × 8 bytes) kept to confirm candidates against the threshold: ~3.5 kB per kept document,
~3.5 GB per million; signatures are streamed from disk task by task, never all held at once.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from autarky.data.config import DedupConfig

_WORD = re.compile(r"\w+")
_SEED = 1
_PRIME = np.uint64((1 << 61) - 1)


class Signer:
    """MinHash signatures of texts with one set of permutations (made once per task, not per document)."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        self.num_perm = cfg.bands * cfg.rows
        self._template = MinHash(num_perm=self.num_perm, seed=_SEED)

    def shingles(self, text: str) -> np.ndarray:
        words = np.fromiter((zlib.crc32(w.encode()) for w in _WORD.findall(text.lower())), dtype=np.uint64)
        n = self.cfg.ngram
        if len(words) < n:
            words = np.concatenate([words, np.zeros(n - len(words), dtype=np.uint64)])
        acc = np.zeros(len(words) - n + 1, dtype=np.uint64)
        for k in range(n):  # polynomial combination, wrapping mod 2^64, truncated to 32 bits below
            acc = acc * np.uint64(1_000_003) + words[k : len(words) - n + 1 + k]
        return np.unique(acc & np.uint64(0xFFFFFFFF))

    def signature(self, text: str) -> np.ndarray:
        m = MinHash(num_perm=self.num_perm, seed=_SEED, hashfunc=int, permutations=self._template.permutations,
                    scheme=self._template.scheme)
        m.update_batch(self.shingles(text).tolist())
        return m.hashvalues.astype(np.uint64)


class NearDuplicates:
    """The global pass: documents offered in corpus order; one is a near-duplicate of an earlier kept one."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        self.lsh = MinHashLSH(num_perm=cfg.bands * cfg.rows, params=(cfg.bands, cfg.rows))
        self._scheme = MinHash(num_perm=1, seed=_SEED).scheme
        self._sigs: dict[int, np.ndarray] = {}
        self._next = 0

    def offer(self, signature: np.ndarray) -> bool:
        """True (and remembered) if the document is kept; False if it duplicates a kept document."""
        m = LeanMinHash(seed=_SEED, hashvalues=signature, scheme=self._scheme)
        for key in self.lsh.query(m):
            if float(np.mean(self._sigs[key] == signature)) >= self.cfg.threshold:
                return False
        key = self._next
        self._next += 1
        self.lsh.insert(key, m, check_duplication=False)
        self._sigs[key] = signature
        return True
