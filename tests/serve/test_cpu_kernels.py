"""The C kernels compute what the model computes: attention over the paged pool, and whole decode steps of many
rows."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from autarky.model.hf import load_hf_folder
from autarky.model.llama import attention, sliding_window_mask
from autarky.serve import cpu_kernels, decode_kernels
from autarky.serve.cache import PagedKVCache
from autarky.serve.decode_kernels import use_decode_kernels

pytestmark = pytest.mark.timeout(300)


def _case(rows: int, heads: int, kv_heads: int, head_dim: int, length: int, seed: int = 0):
    """Pools of 64 scattered 4-slot blocks, `rows` rows of `length` keys (each row's blocks shuffled), one query
    per row at its last position; the mask as `PagedKVCache.begin` makes it (keys past a row's end hidden)."""
    gen = torch.Generator().manual_seed(seed)
    slots_per_row = -(-(length + rows) // 4) * 4 + 4  # a block more than the longest row: its keys are masked
    pool = 64 * 4
    k_pool, v_pool = torch.randn(pool, kv_heads, head_dim, generator=gen), torch.randn(pool, kv_heads, head_dim,
                                                                                      generator=gen)  # fmt: skip
    blocks = torch.randperm(64, generator=gen)[: rows * slots_per_row // 4].view(rows, -1)
    slots = (blocks[:, :, None] * 4 + torch.arange(4)).flatten(1)  # (B, S)
    ends = torch.tensor([length + r for r in range(rows)])  # rows of different lengths
    mask = (torch.arange(slots.shape[1])[None] < ends[:, None])[:, None, None]  # (B, 1, 1, S)
    q = torch.randn(rows, 1, heads, head_dim, generator=gen)
    return q, k_pool, v_pool, slots, mask


def _reference(q, k_pool, v_pool, slots, mask):
    return attention(q, k_pool[slots], v_pool[slots], mask, share_kv_heads=False)


needs_kernel = pytest.mark.skipif(not cpu_kernels.available(), reason="needs a C compiler")


@needs_kernel
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (4, 4, 24), (8, 2, 80)])
@pytest.mark.parametrize("length", [1, 13, 37])
def test_the_kernel_equals_the_models_attention(heads, kv_heads, head_dim, length):
    q, k_pool, v_pool, slots, mask = _case(3, heads, kv_heads, head_dim, length)
    assert cpu_kernels.supports(q, k_pool)
    out = cpu_kernels.paged_decode_attention(q, k_pool, v_pool, slots, mask)
    torch.testing.assert_close(out, _reference(q, k_pool, v_pool, slots, mask), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_the_threaded_kernel_agrees_and_a_row_is_the_same_alone_or_batched(monkeypatch):
    q, k_pool, v_pool, slots, mask = _case(4, 9, 3, 64, 40)
    alone = [cpu_kernels.paged_decode_attention(q[r : r + 1], k_pool, v_pool, slots[r : r + 1], mask[r : r + 1])
             for r in range(4)]  # fmt: skip
    monkeypatch.setattr(cpu_kernels, "PARALLEL_BYTES", 0)  # every call on all threads
    batched = cpu_kernels.paged_decode_attention(q, k_pool, v_pool, slots, mask)
    assert torch.equal(batched, torch.cat(alone))  # bit for bit: each row's arithmetic is its own


@needs_kernel
def test_a_sliding_window_mask_is_honoured():
    q, k_pool, v_pool, slots, mask = _case(2, 4, 2, 32, 30)
    narrowed = sliding_window_mask(mask, 1, slots.shape[1], 8, mask.device)
    out = cpu_kernels.paged_decode_attention(q, k_pool, v_pool, slots, narrowed)
    torch.testing.assert_close(out, _reference(q, k_pool, v_pool, slots, narrowed), rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_shapes_take_the_torch_path():
    q, k_pool, v_pool, slots, mask = _case(2, 4, 2, 32, 10)
    assert not cpu_kernels.supports(q.bfloat16(), k_pool.bfloat16())
    assert not cpu_kernels.supports(torch.randn(2, 1, 4, cpu_kernels.MAX_HEAD_DIM + 8), k_pool)
    with torch.inference_mode():  # the dispatcher still answers, through the compiled path
        out = decode_kernels.paged_attention(q.bfloat16(), k_pool.bfloat16(), v_pool.bfloat16(), slots, mask)
    torch.testing.assert_close(out.float(), _reference(q, k_pool, v_pool, slots, mask), rtol=3e-2, atol=3e-2)


@needs_kernel
@pytest.mark.parametrize("family", ["llama", "qwen2-bias", "sliding"])
def test_a_many_row_decode_step_in_c_equals_the_blocks_own_forward(tiny_hf_model_dir: Path, family, monkeypatch):
    """Rows of different lengths: the layer outputs and the keys/values written to the pool match the model's
    own (eager) block, for plain layers, projections with biases and a sliding window."""
    eager, _ = load_hf_folder(tiny_hf_model_dir)
    if family == "qwen2-bias":
        for layer in eager.layers.values():
            for proj in (layer.attention.wq, layer.attention.wk, layer.attention.wv):
                proj.bias = torch.nn.Parameter(torch.randn(proj.out_features) * 0.1)
    if family == "sliding":
        for layer in eager.layers.values():
            layer.attention.sliding_window = 4
    fused = copy.deepcopy(eager)
    assert use_decode_kernels(fused)
    calls = []
    real = cpu_kernels.decode_rows_block
    monkeypatch.setattr(cpu_kernels, "decode_rows_block", lambda *a: calls.append(1) or real(*a))
    cfg, rows = eager.config, 3
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (rows, 8), generator=gen)
    starts = [8, 6, 7]
    outputs = []
    with torch.inference_mode():
        for model in (eager, fused):
            cache = PagedKVCache(cfg.n_layers, rows * 4, 4, cfg.n_kv_heads, cfg.head_dim, torch.float32)
            cache.k.zero_(), cache.v.zero_()
            tables = [list(range(rows * 4))[::-1][r * 4 : (r + 1) * 4] for r in range(rows)]
            cache.begin(tables, [0] * rows, [8] * rows)
            model(prompt, cache=cache)
            cache.begin(tables, starts, [1] * rows)
            logits = model(prompt[:, :1], torch.tensor(starts)[:, None], cache, logits_at=[0] * rows)
            outputs.append((logits, cache.k.clone(), cache.v.clone()))
    assert len(calls) == cfg.n_layers
    for got, expected in zip(outputs[1], outputs[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
