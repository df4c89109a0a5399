"""C kernels for decode steps of many rows on CPU: attention over the paged KV pool, and the small pieces around
the projections (RMSNorm, rotary + KV write, residual + RMSNorm), each one call instead of several torch ops.

Decode attention is a few small dot products per cached key; its cost is reading the keys and values once.
Inductor's loops for it (`decode_kernels._paged_attention`) vectorise the value sum over the sequence, gathering
one float per slot, and ran at ~2 GB/s: 3 ms per layer at 32 rows × 100 tokens, half of a whole decode step.
`paged_decode_attention` walks each (row, key/value head) once: every key row is loaded once for its whole query
group, every value row is added once into the group's outputs (vectorised over the head dimension), keys a row
cannot see are skipped. Same arithmetic as the reference attention (fp32 scores, softmax with the max subtracted,
fp32 sums); only the order of additions differs, a few ulp.

Around the projections a decode step of many rows is ~25 small eager ops per layer (norms, rotary, the cache
write), each a dispatch and for some an OpenMP region; compiled graphs cost as much per call (guards) as they
save here. `decode_rows_block` runs a layer as 7 oneDNN products, the SwiGLU's two ops and 4 C calls.

Compiled once per machine with the C compiler inductor uses (gcc/clang, -O3 -march=native), cached under
inductor's cache folder, loaded with ctypes (calls release the GIL); OpenMP comes from the libgomp torch already
loaded. `available()` is False without a compiler; callers then keep the torch paths.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable
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

static inline float sum_squares(const float* x, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[i + j] * x[i + j];
    float s = 0.f;
    for (; i < n; i++) s += x[i] * x[i];
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

/* out = w * x / sqrt(mean(x^2) + eps) per row of D; with delta, x + delta first (also written to sum). */
void rms_norm(const float* x, const float* delta, float* sum, const float* w, float* out, int64_t R, int64_t D,
              float eps) {
    for (int64_t r = 0; r < R; r++) {
        const float* xr = x + r * D;
        if (delta) {
            float* hr = sum + r * D;
            for (int64_t d = 0; d < D; d++) hr[d] = xr[d] + delta[r * D + d];
            xr = hr;
        }
        float inv = 1.f / sqrtf(sum_squares(xr, D) / (float)D + eps);
        for (int64_t d = 0; d < D; d++) out[r * D + d] = w[d] * (xr[d] * inv);
    }
}

static inline void rotate(const float* x, const float* c, const float* s, float* out, int64_t E) {
    const int64_t half = E / 2;
    for (int64_t e = 0; e < half; e++) out[e] = x[e] * c[e] + (-x[e + half]) * s[e];
    for (int64_t e = half; e < E; e++) out[e] = x[e] * c[e] + x[e - half] * s[e];
}

/* Rotary on q (R, H, E) in place and on k (R, K, E) into the key pool at slots[r]; v into the value pool. */
void rope_store(float* q, const float* k, const float* v, const float* cos, const float* sin, float* kp,
                float* vp, const int64_t* slots, int64_t R, int64_t H, int64_t K, int64_t E) {
    float tmp[MAX_HEAD_DIM];
    for (int64_t r = 0; r < R; r++) {
        const float* c = cos + r * E;
        const float* s = sin + r * E;
        for (int64_t h = 0; h < H; h++) {
            float* x = q + (r * H + h) * E;
            rotate(x, c, s, tmp, E);
            for (int64_t e = 0; e < E; e++) x[e] = tmp[e];
        }
        for (int64_t h = 0; h < K; h++) {
            rotate(k + (r * K + h) * E, c, s, kp + (slots[r] * K + h) * E, E);
            const float* src = v + (r * K + h) * E;
            float* dst = vp + (slots[r] * K + h) * E;
            for (int64_t e = 0; e < E; e++) dst[e] = src[e];
        }
    }
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
    target = _cache_dir() / f"cpu_kernels_{digest}.so"
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
        log.warning("C decode kernels unavailable (%s); decoding with the torch paths",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for name, argtypes in (("paged_decode_attention", [pointer] * 6 + [size] * 5 + [ctypes.c_float, ctypes.c_int]),
                           ("rms_norm", [pointer] * 5 + [size] * 2 + [ctypes.c_float]),
                           ("rope_store", [pointer] * 8 + [size] * 4)):  # fmt: skip
        fn = getattr(library, name)
        fn.restype, fn.argtypes = None, argtypes
    return library


_available: bool | None = None  # set once, eagerly: compiled graphs read it (they cannot build the library)


def available() -> bool:
    global _available
    if _available is None:
        _available = _library() is not None
    return _available


def supports(q: torch.Tensor, k_pool: torch.Tensor) -> bool:
    """Whether the kernel takes this step: fp32 on CPU, head shapes within its accumulators."""
    return (q.device.type == "cpu" and q.dtype == k_pool.dtype == torch.float32 and k_pool.is_contiguous()
            and _shapes(q.shape[-2], k_pool.shape[-2], q.shape[-1]))  # fmt: skip


def _shapes(H: int, K: int, E: int) -> bool:
    return H > 0 and H % K == 0 and H // K <= MAX_GROUP and E <= MAX_HEAD_DIM and available()


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


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def rms_norm(x: torch.Tensor, norm: torch.nn.Module, delta: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(x + delta, norm(x + delta)) for contiguous fp32 rows (x alone when delta is None): autarky's RMSNorm
    (norm.weight, norm.eps), the residual add fused in."""
    library = _library()
    assert library is not None
    D = x.shape[-1]
    R = x.numel() // D
    out = torch.empty_like(x)
    total = torch.empty_like(x) if delta is not None else x
    library.rms_norm(x.data_ptr(), _ptr(delta), _ptr(total) if delta is not None else None, norm.weight.data_ptr(),
                     out.data_ptr(), R, D, norm.eps)  # fmt: skip
    return total, out


def decode_rows_block(block: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: object,
                      window_mask: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """Block.forward for a decode step (x (B, 1, D), one new token per row) over a PagedKVCache in begin()'s
    decode mode: the projections are the block's own modules (LoRA rows included), the rest is C (`rows_supported`
    first). window_mask narrows the cache's mask to the block's sliding window, if it has one."""
    library = _library()
    assert library is not None
    attention = block.attention
    B, E = x.shape[0], attention.head_dim
    _, normed = rms_norm(x, block.attention_norm)
    q, k, v = (attention.wq(normed).contiguous(), attention.wk(normed).contiguous(),
               attention.wv(normed).contiguous())  # fmt: skip
    H, K = q.shape[-1] // E, k.shape[-1] // E
    k_pool, v_pool, write, read, mask = cache.layer_slots(attention.layer)  # type: ignore[attr-defined]
    cos, sin = cos.reshape(B, E).contiguous(), sin.reshape(B, E).contiguous()
    library.rope_store(q.data_ptr(), k.data_ptr(), v.data_ptr(), cos.data_ptr(), sin.data_ptr(), k_pool.data_ptr(),
                       v_pool.data_ptr(), write.data_ptr(), B, H, K, E)  # fmt: skip
    attended = paged_decode_attention(q.view(B, 1, H, E), k_pool, v_pool, read, window_mask(mask, read.shape[1]))
    h, normed = rms_norm(x, block.ffn_norm, attention.wo(attended))
    return h + block.feed_forward(normed)


def rows_supported(block: torch.nn.Module, x: torch.Tensor, k_pool: torch.Tensor) -> bool:
    """Whether `decode_rows_block` computes this block's step: fp32 rows on CPU, plain rotary (no per-head
    norms), head shapes the kernels take."""
    attention = block.attention
    E, K = attention.head_dim, k_pool.shape[-2]
    H = getattr(attention.wq, "out_features", 0) // E
    return (x.device.type == "cpu" and x.dtype == k_pool.dtype == torch.float32 and x.is_contiguous()
            and k_pool.is_contiguous() and not hasattr(attention, "q_norm") and E % 2 == 0 and _shapes(H, K, E))
