"""Near-duplicate removal: MinHash signatures and LSH band keys per task, then one sorted global pass.

Shingles are FineWeb's: word 5-grams of the lower-cased text with punctuation removed. Everything per document
is vectorised: words are cut and hashed in C (bytes.translate, bytes.split, zlib.crc32 through `map`, no Python
loop per word), the n-gram hashes are combined with numpy, and the `num_perm` permutations are one numpy
product over all shingles (h -> a*h + b mod 2^32, a odd: a bijection, so each row is the minimum of a random
permutation of the document's shingle hashes). Bytes >= 0x80 count as word characters, so non-ASCII words stay
whole, as with `\\w+`.

The global pass is datatrove's (MinhashDedupBuckets/Cluster) rather than an in-memory LSH index, so its memory does
not grow with the corpus by kilobytes per document: each task writes one 64-bit key per band per document; for one
band at a time the keys of all tasks are sorted together, documents with equal keys become candidate pairs,
a pair counts once its signatures agree on at least `threshold` of their rows, and a union-find over the
confirmed pairs keeps the first document (in corpus order) of each cluster. The pass holds one band's keys
(~16 bytes per document) and the union-find of documents that have a near-duplicate; signatures stay on disk.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np

from autarky.data.config import DedupConfig

_SEED = 1
_NGRAM_MULTIPLIER = np.uint64(1_000_003)
_MASK32 = np.uint64(0xFFFFFFFF)
_CHUNK = 1 << 13  # shingles per product, so a 16 MB document never makes a num_perm x n matrix at once
_COMPARE_IN_RUN = 8  # earlier members of an equal-key run a document is checked against
# ASCII letters, digits and "_" are kept, every other ASCII byte becomes a space; bytes >= 0x80 are kept
_WORD_BYTES = bytes(c if (c >= 0x80 or chr(c).isalnum() or c == ord("_")) else 0x20 for c in range(256))


def _words(text: str) -> np.ndarray:
    """crc32 of every word of the lower-cased text, as uint64."""
    words = text.lower().encode("utf-8").translate(_WORD_BYTES).split()
    return np.fromiter(map(zlib.crc32, words), dtype=np.uint64, count=len(words))


class Signer:
    """MinHash signatures (uint32 rows) and LSH band keys (uint64 per band) with one fixed set of permutations."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        self.num_perm = cfg.bands * cfg.rows
        rng = np.random.default_rng(_SEED)
        self._a = (rng.integers(0, 1 << 32, self.num_perm, dtype=np.uint64) | np.uint64(1)).astype(np.uint32)
        self._b = rng.integers(0, 1 << 32, self.num_perm, dtype=np.uint64).astype(np.uint32)
        # a band's rows mixed into one key; odd 64-bit multipliers keep it collision-free in practice
        self._band_mix = rng.integers(0, 1 << 63, cfg.rows, dtype=np.uint64) | np.uint64(1)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the word n-grams (a text shorter than n words is one shingle, padded with zeros)."""
        words = _words(text)
        n = self.cfg.ngram
        if len(words) < n:
            words = np.concatenate([words, np.zeros(n - len(words), dtype=np.uint64)])
        count = len(words) - n + 1
        acc = words[:count].copy()
        for k in range(1, n):  # polynomial combination, wrapping mod 2^64, truncated to 32 bits below
            acc *= _NGRAM_MULTIPLIER
            acc += words[k : k + count]
        return (acc & _MASK32).astype(np.uint32)

    def signature(self, text: str) -> np.ndarray:
        hashes = self.shingles(text)
        signature = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for lo in range(0, len(hashes), _CHUNK):
            product = np.multiply.outer(self._a, hashes[lo : lo + _CHUNK])
            product += self._b[:, None]
            np.minimum(signature, product.min(axis=1), out=signature)
        return signature

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        """One uint64 per band: documents that share a band's rows share its key."""
        rows = signature.reshape(self.cfg.bands, self.cfg.rows).astype(np.uint64)
        return (rows * self._band_mix).sum(axis=1, dtype=np.uint64)


class UnionFind:
    """Clusters of document ids; the root of a cluster is its smallest id (the first in corpus order)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while (up := self.parent.get(root, root)) != root:
            root = up
        while x != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)


def equal_key_runs(keys: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Groups of ids (ascending) whose keys are equal, for groups of two or more."""
    order = np.lexsort((ids, keys))
    keys, ids = keys[order], ids[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    sizes = np.diff(np.append(starts, len(keys)))
    return [ids[s : s + k] for s, k in zip(starts[sizes > 1], sizes[sizes > 1], strict=True)]


def near_duplicate_clusters(
    band_columns: Callable[[int], tuple[np.ndarray, np.ndarray]],
    signature_of: Callable[[int], np.ndarray],
    cfg: DedupConfig,
    removed: np.ndarray,
) -> UnionFind:
    """Union-find of confirmed near-duplicate pairs among documents not in `removed` (a bool per global id).

    band_columns(b) gives (keys, global ids) of band b over the whole corpus.
    """
    clusters = UnionFind()
    for band in range(cfg.bands):
        keys, ids = band_columns(band)
        alive = ~removed[ids]
        for run in equal_key_runs(keys[alive], ids[alive]):
            _confirm_run(run, signature_of, cfg.threshold, clusters)
    return clusters


def _confirm_run(run: Sequence[int], signature_of: Callable[[int], np.ndarray], threshold: float,
                 clusters: UnionFind) -> None:
    signatures: dict[int, np.ndarray] = {}
    for i, doc in enumerate(run):
        for earlier in run[max(0, i - _COMPARE_IN_RUN) : i]:
            if clusters.find(int(doc)) == clusters.find(int(earlier)):
                break
            a = signatures.setdefault(int(doc), signature_of(int(doc)))
            b = signatures.setdefault(int(earlier), signature_of(int(earlier)))
            if float(np.mean(a == b)) >= threshold:
                clusters.union(int(doc), int(earlier))
                break
