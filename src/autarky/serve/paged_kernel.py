"""A C kernel for decode attention over the paged KV pool on CPU: one query per row, keys read in place.

Decode attention is a few small dot products per cached key; its cost is reading the keys and values once.
Inductor's loops for it (`decode_kernels._paged_attention`) vectorise the value sum over the sequence, gathering
one float per slot, and ran at ~2 GB/s: 3 ms per layer at 32 rows × 100 tokens, half of a whole decode step.
This kernel walks each (row, key/value head) once: every key row is loaded once for its whole query group, every
value row is added once into the group's outputs (vectorised over the head dimension), keys a row cannot see are
skipped. Same arithmetic as the reference attention (fp32 scores, softmax with the max subtracted, fp32 sums);
only the order of additions differs, a few ulp.

Compiled once per machine with the C compiler inductor uses (gcc/clang, -O3 -march=native), cached under
inductor's cache folder, loaded with ctypes (the call releases the GIL); OpenMP comes from the libgomp torch
already loaded. `available()` is False without a compiler; callers then keep the compiled torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("autarky.serve")

MAX_GROUP, MAX_HEAD_DIM = 16, 256  # the kernel's stack accumulators; other shapes take the torch path
PARALLEL_BYTES = 4 << 20  # keys+values read from which both threads are worth an OpenMP start-up

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#define MAX_GROUP 16
#define MAX_HEAD_DIM 256

static inline float dot(const float* a, const float* b, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0.f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

/* q (B, H, E); pools (N, K, E); slots, mask (B, S); out (B, H, E). Head h reads key/value head h / (H / K). */
void paged_decode_attention(const float* q, const float* kp, const float* vp, const int64_t* slots,
                            const uint8_t* mask, float* out, int64_t B, int64_t S, int64_t H, int64_t K,
                            int64_t E, float scale, int threads) {
    const int64_t G = H / K;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if(threads > 1)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t k = 0; k < K; k++) {
            float* scores = (float*)malloc(sizeof(float) * G * S);
            float acc[MAX_GROUP][MAX_HEAD_DIM];
            float peak[MAX_GROUP], total[MAX_GROUP];
            const float* qg = q + (b * H + k * G) * E;
            const int64_t* row = slots + b * S;
            const uint8_t* seen = mask + b * S;
            for (int64_t g = 0; g < G; g++) peak[g] = -INFINITY;
            for (int64_t s = 0; s < S; s++) {
                if (!seen[s]) continue;
                const float* key = kp + (row[s] * K + k) * E;
                for (int64_t g = 0; g < G; g++) {
                    float x = dot(qg + g * E, key, E) * scale;
                    scores[g * S + s] = x;
                    if (x > peak[g]) peak[g] = x;
                }
            }
            for (int64_t g = 0; g < G; g++) {
                total[g] = 0.f;
                for (int64_t e = 0; e < E; e++) acc[g][e] = 0.f;
            }
            for (int64_t s = 0; s < S; s++) {
                if (!seen[s]) continue;
                const float* value = vp + (row[s] * K + k) * E;
                for (int64_t g = 0; g < G; g++) {
                    float w = expf(scores[g * S + s] - peak[g]);
                    total[g] += w;
                    for (int64_t e = 0; e < E; e++) acc[g][e] += w * value[e];
                }
            }
            for (int64_t g = 0; g < G; g++) {
                float* o = out + (b * H + k * G + g) * E;
                for (int64_t e = 0; e < E; e++) o[e] = acc[g][e] / total[g];
            }
            free(scores);
        }
    }
}
"""


def _cache_dir() -> Path:
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return Path(cache_dir()) / "autarky"
    except Exception:  # an older or different inductor: the temp folder will do
        return Path(tempfile.gettempdir()) / f"autarky_kernels_{os.getuid()}"


@functools.cache
def _library() -> ctypes.CDLL | None:
    flags = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]
    digest = hashlib.sha256((_SOURCE + " ".join(flags)).encode()).hexdigest()[:16]
    target = _cache_dir() / f"paged_attention_{digest}.so"
    try:
        if not target.exists():
            from torch._inductor.cpp_builder import get_cpp_compiler

            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                source, built = Path(tmp) / "kernel.c", Path(tmp) / "kernel.so"
                source.write_text(_SOURCE)
                compiler = get_cpp_compiler()
                subprocess.run([compiler, "-x", "c", *flags, str(source), "-o", str(built), "-lm"], check=True,
                               capture_output=True, timeout=120)  # fmt: skip
                os.replace(built, target)  # atomic: another process may be building the same file
        library = ctypes.CDLL(str(target))
    except Exception as exc:  # no compiler, or one that cannot target this machine
        log.warning("paged attention kernel unavailable (%s); decoding with the compiled torch path",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return None
    fn = library.paged_decode_attention
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_float, ctypes.c_int]
    return library


_available: bool | None = None  # set once, eagerly: compiled graphs read it (they cannot build the library)


def available() -> bool:
    global _available
    if _available is None:
        _available = _library() is not None
    return _available


def supports(q: torch.Tensor, k_pool: torch.Tensor) -> bool:
    """Whether the kernel takes this step: fp32 on CPU, head shapes within its accumulators."""
    H, K, E = q.shape[-2], k_pool.shape[-2], q.shape[-1]
    return (q.device.type == "cpu" and q.dtype == k_pool.dtype == torch.float32 and k_pool.is_contiguous()
            and H % K == 0 and H // K <= MAX_GROUP and E <= MAX_HEAD_DIM and available())  # fmt: skip


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """q (B, 1, H, E) over the keys/values at `slots` (B, S) of the pools (N, K, E) where mask (B, 1, 1, S) is
    True → (B, 1, H·E), as `autarky.model.llama.attention` computes it (`supports` first)."""
    library = _library()
    assert library is not None
    B, _, H, E = q.shape
    S, K = slots.shape[1], k_pool.shape[1]
    q = q.contiguous()
    slots = slots.contiguous()
    mask = mask.reshape(B, S).contiguous()
    out = torch.empty(B, 1, H * E, dtype=q.dtype)
    read = 2 * slots.numel() * K * E * 4
    threads = torch.get_num_threads() if read >= PARALLEL_BYTES else 1
    library.paged_decode_attention(q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), slots.data_ptr(),
                                   mask.data_ptr(), out.data_ptr(), B, S, H, K, E, E**-0.5, threads)  # fmt: skip
    return out


@torch.library.custom_op("autarky::paged_decode_attention", mutates_args=())
def paged_decode_attention_op(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """`paged_decode_attention` as one opaque call inside a compiled graph."""
    return paged_decode_attention(q, k_pool, v_pool, slots, mask)


@paged_decode_attention_op.register_fake
def _paged_decode_attention_shape(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
                                  mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    return q.new_empty((q.shape[0], 1, q.shape[2] * q.shape[3]))
