"""Compiled matrix–vector kernels for decoding one sequence at a time on CPU.

A decode step multiplies one activation row per sequence by every weight matrix, so on CPU it is bound by how
fast the weights stream from memory. torch's default path for that, MKL's sgemv, streams fp32 weights at about
8 GB/s on the AMD EPYC this project runs on, while one core reads memory at about 19 GB/s. One reduction per
output element, compiled by inductor into vectorized C++, gets close to the read speed (bench/serve_decode.py):
  - fp32 weights: about twice MKL's rate, same arithmetic (fp32 products, fp32 sums; only the order of the
    additions differs, a few ulp);
  - int8 weights (autarky.serve.quantize): converted to float inside the loop, so memory delivers one byte
    per weight.
The kernels take B rows as an (N, B) output, weight row outer, but at 2-4 rows oneDNN is faster (MAX_ROWS).

`decode_block` fuses a whole layer's decode step around these products (2 compiled calls instead of ~30 eager
ops, whose per-op overhead was as large as the arithmetic), with attention written as reductions too. Serving swaps
each of the model's `Block`s for a `DecodeBlock` (from outside the model, as it swaps `nn.Linear`s), which takes
that path for decode steps of at most MAX_ROWS rows; the model's own forward stays the one forward pass.
The kernels run with one thread: an OpenMP region costs ~100 us to start once libgomp throttles (as soon as
more OpenMP threads exist in the process than cores), more than a whole SmolLM2 matrix–vector product. Only
matrices of PARALLEL_BYTES or more (the output projection) use all of torch's threads.
Rows beyond MAX_ROWS (prefill, batched decode) go to oneDNN (DecodeLinear), which is efficient there.
Needs a C++ compiler at run time; without one, `kernels_available()` is False and everything stays eager.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from autarky.model.llama import Block, KVCache, sliding_window_mask
from autarky.model.moe import MoE
from autarky.serve import cpu_kernels
from autarky.serve.cache import PagedKVCache
from autarky.serve.packed import (
    PackedBF16Linear,
    bf16_packing_supported,
    packed_blocks,
    packed_linear,
    prepack,
    replace_linears,
    replace_modules,
)

log = logging.getLogger("autarky.serve")

# Decode steps of at most this many rows use the kernels. Measured: at 2-4 rows oneDNN (DecodeLinear's packed
# path) with the eager block is twice as fast as these reductions, so only single-sequence steps take them.
MAX_ROWS = 1
_OPTIONS = {"cpp.threads": 1}
# Shapes are dynamic, but the KV cache's strides change as it grows and row counts of 1 are specialised:
# a few compiles per function, which dynamo's default limit of 8 could cut short.
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def _products_summed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight[:, None, :] * x[None, :, :]).sum(-1)  # (N, B) from x (B, K), weight (N, K)


@torch.compile(dynamic=True, options=_OPTIONS)
def _matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _products_summed(x, weight)


PARALLEL_BYTES = 16 << 20  # weight bytes from which a product is worth the OpenMP start-up


@torch.compile(dynamic=True)
def _matvec_parallel(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _products_summed(x, weight)


def _blocks_summed(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """x (B, K) @ the weight held as blocks (N/b, K, b) of b output channels (`packed_blocks`) → (B, N/b·b). One
    sum per group of 16 lanes, all in one kernel: inductor fuses them into a single loop over K that reads each
    block in memory order (a single sum over K would walk the block once per group, with a stride, and run at a
    fraction of the memory's speed)."""
    n_blocks, k, b = blocks.shape
    width = min(16, b)
    lanes = blocks.view(1, n_blocks, k, b // width, width)
    xk = x[:, None, :, None]
    return torch.stack([(lanes[:, :, :, j] * xk).sum(2) for j in range(b // width)], 2).flatten(1)


@torch.compile(dynamic=True, options=_OPTIONS)
def _matvec_blocks(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    return _blocks_summed(x, blocks)


@torch.compile(dynamic=True)
def _matvec_blocks_parallel(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    return _blocks_summed(x, blocks)


def _int8_products_summed(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return (weight[:, None, :].to(x.dtype) * x[None, :, :]).sum(-1) * scales[:, None]  # (N, B)


@torch.compile(dynamic=True, options=_OPTIONS)
def _matvec_int8(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return _int8_products_summed(x, weight, scales)


@torch.compile(dynamic=True)
def _matvec_int8_parallel(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return _int8_products_summed(x, weight, scales)


@functools.cache
def kernels_available() -> bool:
    """Compile and check a tiny kernel once per process (needs a C++ compiler)."""
    try:
        with torch.inference_mode():  # as the engine runs: grad mode is part of what a compiled graph assumes
            x, w = torch.randn(1, 8), torch.randn(4, 8)
            ok = torch.allclose(_matvec(x, w).t(), x @ w.t(), atol=1e-5)
    except Exception as exc:  # no compiler, or an inductor that cannot target this machine
        log.warning("compiled decode kernels unavailable (%s); decoding with torch's eager matmuls",
                    str(exc).splitlines()[0][:200])
        return False
    return ok


def decode_rows(x: torch.Tensor) -> int:
    """How many activation rows x (..., K) holds, or 0 when the kernels should not take it."""
    rows = x.numel() // x.shape[-1]
    return rows if x.device.type == "cpu" and rows <= MAX_ROWS and not x.requires_grad else 0


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, K) with the same strides every time: dynamo specialises on strides, and every new layout
    would be one more compile (and past its recompile limit, a silent fall back to eager)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride() == (x.shape[1], 1) else x.clone(memory_format=torch.contiguous_format)


def matvec(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight (N, K).T for a few rows."""
    kernel = _matvec_parallel if weight.numel() * weight.element_size() >= PARALLEL_BYTES else _matvec
    return kernel(_rows(x), weight).t().reshape(*x.shape[:-1], weight.shape[0])


def matvec_blocks(x: torch.Tensor, blocks: torch.Tensor, n: int) -> torch.Tensor:
    """x (..., K) @ weight (n, K).T for a few rows, the weight held as blocks (N/b, K, b) (`packed_blocks`)."""
    kernel = _matvec_blocks_parallel if blocks.numel() * blocks.element_size() >= PARALLEL_BYTES else _matvec_blocks
    return kernel(_rows(x), blocks)[:, :n].reshape(*x.shape[:-1], n)


def matvec_int8(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ (weight (N, K) int8 · scales (N,)).T for a few rows."""
    kernel = _matvec_int8_parallel if weight.numel() >= PARALLEL_BYTES else _matvec_int8
    out = kernel(_rows(x), weight, scales.to(x.dtype))
    return out.t().reshape(*x.shape[:-1], weight.shape[0])


@torch.compile(dynamic=True, options=_OPTIONS)
def _block_head(block: Block, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return block.attention.project(block.attention_norm(h), cos, sin)


def _one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """autarky.model.llama.attention for one query per row, written as reductions so that inductor fuses it
    into loops (its matmul form becomes MKL bmm calls of ~80 us each here, SDPA's CPU kernel ~200 us).
    q (B, 1, H, E); k, v (B, S, K, E); mask (B, 1, 1, S) → (B, 1, H·E)."""
    B, _, H, E = q.shape
    K = k.shape[2]
    qg = q.view(B, K, H // K, 1, E)  # each key/value head's query group
    keys, values = k.permute(0, 2, 1, 3)[:, :, None], v.permute(0, 2, 1, 3)[:, :, None]  # (B, K, 1, S, E)
    scores = (qg * keys).sum(-1) * E**-0.5  # (B, K, H/K, S)
    weights = scores.masked_fill(~mask.view(B, 1, 1, -1), float("-inf")).softmax(dim=-1)
    return (weights[..., None] * values).sum(-2).reshape(B, 1, H * E)  # (B, K, H/K, E) → (B, 1, H·E)


def _paged_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """_one_query_attention over the keys/values at `slots` (B, S) of a paged cache's pools (N, K, E): compiled,
    the indexing becomes indirect loads inside the attention loops, so no row's keys are copied out of the pool
    (a gather per layer per step would move every row's whole context through memory once more). The C kernel
    (autarky.serve.cpu_kernels) where it applies."""
    if cpu_kernels.supports(q, k_pool):
        return cpu_kernels.paged_decode_attention_op(q, k_pool, v_pool, slots, mask)
    return _one_query_attention(q, k_pool[slots], v_pool[slots], mask)


_paged_attention_serial = torch.compile(_paged_attention, dynamic=True, options=_OPTIONS)
_paged_attention_parallel = torch.compile(_paged_attention, dynamic=True)


def paged_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """One query per row (B, 1, H, E) over the pool in place → (B, 1, H·E): the C kernel where it applies (fp32,
    several times faster), else compiled, all threads only when the keys and values read are worth an OpenMP
    start-up (see PARALLEL_BYTES)."""
    if cpu_kernels.supports(q, k_pool):
        return cpu_kernels.paged_decode_attention(q, k_pool, v_pool, slots, mask)
    read = 2 * slots.numel() * k_pool[0].numel() * k_pool.element_size()
    kernel = _paged_attention_parallel if read >= PARALLEL_BYTES else _paged_attention_serial
    return kernel(q, k_pool, v_pool, slots, mask)


@torch.compile(dynamic=True, options=_OPTIONS)
def _block_tail(block: Block, h: torch.Tensor, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                slots: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    h = h + block.attention.wo(_paged_attention(q, k_pool, v_pool, slots, mask))
    return h + block.feed_forward(block.ffn_norm(h))


def decode_block(block: Block, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 cache: PagedKVCache) -> torch.Tensor:  # fmt: skip
    """Block.forward for a decode step of at most MAX_ROWS rows, in two compiled pieces around the cache
    update: norms, rotary, attention and the SwiGLU are fused with the matrix–vector kernels, and a layer
    costs 2 compiled calls instead of about 30 eager ones. The family features go through the same pieces:
    biases and per-head norms are in the block's own projections, scaled RoPE in cos/sin, and a sliding
    window narrows the cache's mask between the two."""
    h = _rows(h).unsqueeze(1)  # (B, 1, D) with the same strides every step
    q, k, v = _block_head(block, h, cos, sin)
    return _block_tail(block, h, q, *_stored(block, k, v, cache))


def _stored(block: Block, k: torch.Tensor, v: torch.Tensor,
            cache: PagedKVCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """cache.store for a decode step, the mask narrowed to the block's sliding window if it has one."""
    k_pool, v_pool, slots, mask = cache.store(block.attention.layer, k, v)
    assert mask is not None, "decode steps need a cache in decode mode (begin)"
    return k_pool, v_pool, slots, _narrowed(block, mask, slots.shape[1])


def _narrowed(block: Block, mask: torch.Tensor, keys: int) -> torch.Tensor:
    """A decode step's mask (B, 1, 1, S) narrowed to the block's sliding window, if it has one."""
    window = block.attention.sliding_window
    return mask if window is None else sliding_window_mask(mask, 1, keys, window, mask.device)


class KernelSwitch:
    """A serving layer with its own few-row kernel path, off until `use_decode_kernels` turns it on (int8)."""

    decode_kernels = False


class DecodeBlock(Block):
    """A Block whose decode steps of at most MAX_ROWS rows run `decode_block`, and whose bigger decode steps attend
    with `paged_attention` (the pool read in place); everything else (prefill, other caches) is the Block's own
    computation. It takes over the block's submodules, so
    parameter names and weights stay those of the model."""

    # Serving LoRA (autarky.serve.lora.LoraRows) sets this: the fused path reads the projections inside compiled
    # graphs, so the steps whose rows carry adapters take the block's own computation.
    lora = None

    def __init__(self, block: Block) -> None:
        nn.Module.__init__(self)  # not Block.__init__: the submodules are the block's, not new ones
        self.attention_norm, self.attention = block.attention_norm, block.attention
        self.ffn_norm, self.feed_forward = block.ffn_norm, block.feed_forward

    def _window(self, mask: torch.Tensor, keys: int) -> torch.Tensor:
        return _narrowed(self, mask, keys)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        if not (isinstance(cache, PagedKVCache) and cache.decoding):
            return super().forward(x, cos, sin, cache)
        if x.shape[0] <= MAX_ROWS and not (self.lora is not None and self.lora.active):
            return decode_block(self, x, cos, sin, cache)
        # More rows (or adapter rows): the block's own projections, the rest in C where it applies, else eager
        # with the attention reading the pool in place.
        if cpu_kernels.rows_supported(self, x, cache.k):
            return cpu_kernels.decode_rows_block(self, x, cos, sin, cache, self._window)
        q, k, v = self.attention.project(self.attention_norm(x), cos, sin)
        h = x + self.attention.wo(paged_attention(q, *_stored(self, k, v, cache)))
        return h + self.feed_forward(self.ffn_norm(h))


class DecodeLinear(nn.Module):
    """An nn.Linear for CPU serving: a few rows go through the compiled matrix-vector kernels; more rows (prefill,
    big decode batches) through oneDNN with the weight prepacked once, 1.6-4x MKL's speed at 8-32 rows here (fp32,
    and bf16 where the CPU has it natively; otherwise F.linear). The layer holds the weight once: where oneDNN
    packs it in blocks of output channels (fp32 here), `weight` is a view of the packed memory (N/b, K, b) that
    the few-row kernels read as well (`blocked`); otherwise `weight` is the plain (N, K) weight, sharing the
    original's storage, and the packed copy comes on top."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        packable = torch.backends.mkldnn.is_available() and (
            weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and bf16_packing_supported())
        )
        # A plain attribute: an mkldnn-layout tensor cannot be moved, saved or cloned like a buffer.
        self.packed = prepack(weight) if packable else None
        blocks = packed_blocks(self.packed, weight) if self.packed is not None else None
        self.blocked = blocks is not None
        # A buffer, not a Parameter: the compiled kernel then takes every matrix shape with one graph.
        self.register_buffer("weight", weight if blocks is None else blocks)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())  # (N,) (Qwen2's q/k/v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if decode_rows(x):
            out = matvec_blocks(x, self.weight, self.out_features) if self.blocked else matvec(x, self.weight)
        elif self.packed is not None:
            out = packed_linear(x, self.packed)
        else:
            return F.linear(x, self.weight, self.bias)
        return out if self.bias is None else out + self.bias


class BlockedEmbedding(nn.Module):
    """The token embedding of a model whose output projection is tied to it, read from that projection's blocked
    weight (row t is [t // b, :, t % b]): serving then holds the table once, where a separate packed copy for the
    output projection would add vocabulary × dim more."""

    def __init__(self, output: DecodeLinear) -> None:
        super().__init__()
        assert output.blocked
        self.register_buffer("weight", output.weight)  # the same tensor: the state dict keeps its names

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b = self.weight.shape[-1]
        return self.weight[tokens // b, :, tokens % b]  # (..., D)


def use_decode_kernels(model: nn.Module) -> bool:
    """Route the single-row decode steps of a CPU model through the compiled kernels: each Block becomes a
    DecodeBlock, nn.Linear becomes DecodeLinear (a tied embedding then reads the output projection's weight), and quantized layers that know the kernels switch them on. False
    (model unchanged) when the kernels are unavailable, or for `--quantize bf16` models, whose packed oneDNN op
    inductor cannot trace."""
    if any(isinstance(m, PackedBF16Linear) for m in model.modules()) or not kernels_available():
        return False
    cpu_kernels.available()  # built (or found) now: compiled graphs only read whether it is
    # MoE blocks decline: their routed experts (gather, grouped matmul, scatter) are not the fused SwiGLU of
    # `_block_tail`, so they keep Block.forward; their router and shared experts still get the few-row kernels.
    replace_modules(model, Block, lambda block: block if isinstance(block.feed_forward, MoE) else DecodeBlock(block))
    for child in model.modules():
        if isinstance(child, KernelSwitch):
            child.decode_kernels = True
    embedding, output = getattr(model, "tok_embeddings", None), getattr(model, "output", None)
    tied = embedding is not None and getattr(output, "weight", None) is getattr(embedding, "weight", False)
    replace_linears(model, DecodeLinear)
    if tied and isinstance(model.output, DecodeLinear) and model.output.blocked:
        model.tok_embeddings = BlockedEmbedding(model.output)
    _own_storage(model)
    return True


def _own_storage(model: nn.Module) -> None:
    """Give the tensors the model still holds (norms, biases, an untied embedding) memory of their own.
    safetensors maps the checkpoint file once and every tensor it loads points into that mapping, which a single
    remaining one (a norm's weight) keeps whole after the projections have moved into packed memory: the weights
    would be held twice again. Tensors that share memory keep sharing it (one copy per storage)."""
    packed = {m.weight.untyped_storage().data_ptr() for m in model.modules() if isinstance(m, DecodeLinear) and m.blocked}
    copies: dict[int, torch.UntypedStorage] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                storage = None if tensor is None else tensor.untyped_storage()
                if storage is None or storage.data_ptr() in packed or tensor.device.type != "cpu":
                    continue
                copy = copies.setdefault(storage.data_ptr(), storage.clone())
                owned = tensor.new_empty(0).set_(copy, tensor.storage_offset(), tensor.shape, tensor.stride())
                if isinstance(tensor, nn.Parameter):
                    tensor.data = owned
                else:
                    table[name] = owned
