"""The compiled CPU decode kernels compute what the eager model computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autarky.model.hf import load_hf_folder
from autarky.serve import decode_kernels
from autarky.serve.cache import PagedKVCache
from autarky.serve.decode_kernels import (
    DecodeBlock,
    DecodeLinear,
    decode_block,
    matvec,
    matvec_int8,
    use_decode_kernels,
)
from autarky.serve.quantize import Int8Linear
from autarky.serve.registry import ServedModelSpec, load_served_model

pytestmark = pytest.mark.timeout(300)


def _paged_cache(cfg, rows: int, length: int = 32, block_size: int = 4) -> tuple[PagedKVCache, list[list[int]]]:
    """A paged cache with `rows` sequences of `length` positions, each on its own blocks (in reverse order, so
    that no row's blocks are contiguous)."""
    per_row = length // block_size
    cache = PagedKVCache(cfg.n_layers, rows * per_row, block_size, cfg.n_kv_heads, cfg.head_dim, torch.float32)
    cache.k.zero_(), cache.v.zero_()  # the pools start uninitialised; the tests compare them whole
    blocks = list(range(rows * per_row))[::-1]
    return cache, [blocks[r * per_row : (r + 1) * per_row] for r in range(rows)]


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_matvec_equals_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    weight, x = torch.randn(300, 96, generator=gen), torch.randn(rows, 1, 96, generator=gen)
    torch.testing.assert_close(matvec(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_the_output_projection_takes_the_threaded_kernel_and_agrees():
    weight = torch.randn((decode_kernels.PARALLEL_BYTES // 4) // 64 + 64, 64)
    x = torch.randn(1, 64)
    torch.testing.assert_close(matvec(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("out_features", [200, decode_kernels.PARALLEL_BYTES // 96 + 8])  # one thread, all
def test_int8_matvec_equals_the_dequantized_linear(out_features):
    layer = Int8Linear(torch.nn.Linear(96, out_features, bias=False))
    x = torch.randn(3, 96)
    dequantized = layer.weight_int8.float() * layer.scales[:, None]
    torch.testing.assert_close(matvec_int8(x, layer.weight_int8, layer.scales), x @ dequantized.t(),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_linear_agrees_with_linear_for_decode_and_prefill_rows(dtype):
    linear = torch.nn.Linear(96, 200, bias=False).to(dtype)
    layer = DecodeLinear(linear)
    assert layer.packed is not None or dtype == torch.bfloat16  # bf16 is packed only on CPUs with native bf16
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    with torch.inference_mode():
        for x in (torch.randn(1, 1, 96, dtype=dtype), torch.randn(2, 9, 96, dtype=dtype)):  # matvec, oneDNN
            torch.testing.assert_close(layer(x), linear(x), **tolerance)
    if layer.blocked:  # one copy: the few-row kernels read the packed weight's memory
        assert layer.weight.data_ptr() == torch.ops.mkldnn.data_ptr(layer.packed)
    else:
        assert layer.weight.data_ptr() == linear.weight.data_ptr()  # shared, not copied


@pytest.mark.parametrize("rows", sorted({1, decode_kernels.MAX_ROWS}))
def test_decode_block_equals_the_blocks_own_forward(tiny_hf_model_dir: Path, rows):
    eager, _ = load_hf_folder(tiny_hf_model_dir)
    fused, _ = load_hf_folder(tiny_hf_model_dir)
    assert use_decode_kernels(fused)
    cfg = eager.config
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (rows, 6), generator=gen)
    positions = torch.tensor([6, 4, 5][:rows])
    outputs = []
    with torch.inference_mode():
        for model, step in ((eager, None), (fused, decode_block)):
            cache, tables = _paged_cache(cfg, rows)
            cache.begin(tables, [0] * rows, [6] * rows)
            model(prompt, cache=cache)
            cache.begin(tables, positions.tolist(), [1] * rows)
            cos, sin = model.rope_cos[positions][:, None], model.rope_sin[positions][:, None]
            h = model.tok_embeddings(prompt[:, :1])
            for block in model.layers.values():
                h = step(block, h, cos, sin, cache) if step else block(h, cos, sin, cache)
            outputs.append((h, cache.k.clone()))
    (h_eager, k_eager), (h_fused, k_fused) = outputs
    torch.testing.assert_close(h_fused, h_eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(k_fused, k_eager, rtol=1e-4, atol=1e-4)


def test_the_models_own_forward_takes_the_decode_blocks(tiny_hf_model_dir: Path, monkeypatch):
    """Serving swaps Block for DecodeBlock from outside: the model's forward then runs the fused kernels for a
    one-row decode step and the Block's own computation for the prefill, with the same logits as the plain model."""
    eager, _ = load_hf_folder(tiny_hf_model_dir)
    fused, _ = load_hf_folder(tiny_hf_model_dir)
    assert use_decode_kernels(fused)
    assert all(isinstance(block, DecodeBlock) for block in fused.layers.values())
    assert set(fused.state_dict()) == set(eager.state_dict())  # the same parameter names
    fused_calls = []
    monkeypatch.setattr(decode_kernels, "decode_block",
                        lambda *args: fused_calls.append(1) or decode_block(*args))  # fmt: skip
    cfg = eager.config
    prompt = torch.randint(0, cfg.vocab_size, (1, 7), generator=torch.Generator().manual_seed(3))
    logits = []
    with torch.inference_mode():
        for model in (eager, fused):
            cache, tables = _paged_cache(cfg, 1)
            cache.begin(tables, [0], [6])
            first = model(prompt[:, :6], cache=cache, logits_at=[5])
            positions = torch.tensor([6])
            cache.begin(tables, [6], [1])
            logits.append((first, model(prompt[:, 6:], positions[:, None], cache, logits_at=[0])))
    (first_eager, step_eager), (first_fused, step_fused) = logits
    assert len(fused_calls) == cfg.n_layers  # the decode step only
    torch.testing.assert_close(first_fused, first_eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step_fused, step_eager, rtol=1e-4, atol=1e-4)


def test_without_a_compiler_the_model_stays_eager(tiny_hf_model_dir: Path, monkeypatch):
    def no_compiler(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(decode_kernels, "_matvec", no_compiler)
    decode_kernels.kernels_available.cache_clear()
    try:
        model, _ = load_hf_folder(tiny_hf_model_dir)
        assert not use_decode_kernels(model)
        assert not any(isinstance(m, DecodeBlock) for m in model.modules())
        assert not any(isinstance(m, DecodeLinear) for m in model.modules())
    finally:
        decode_kernels.kernels_available.cache_clear()


@pytest.mark.parametrize("kernels", [True, False])
def test_serve_spec_turns_the_kernels_on_by_default_and_off_on_request(tiny_hf_model_dir: Path, kernels):
    model, _ = load_served_model(ServedModelSpec(str(tiny_hf_model_dir), decode_kernels=kernels))
    assert any(isinstance(m, DecodeLinear) for m in model.modules()) == kernels
    assert any(isinstance(m, DecodeBlock) for m in model.modules()) == kernels


def test_int8_layers_switch_their_kernels_on_with_the_spec(tiny_hf_model_dir: Path):
    model, _ = load_served_model(ServedModelSpec(str(tiny_hf_model_dir), quantize="int8"))
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.decode_kernels for m in layers)
    assert all(isinstance(block, DecodeBlock) for block in model.layers.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_linear_adds_the_bias(dtype):
    linear = torch.nn.Linear(96, 200, bias=True).to(dtype)
    layer = DecodeLinear(linear)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    with torch.inference_mode():
        for x in (torch.randn(1, 1, 96, dtype=dtype), torch.randn(2, 9, 96, dtype=dtype)):  # matvec, oneDNN
            torch.testing.assert_close(layer(x), linear(x), **tolerance)


@pytest.mark.parametrize("kernels", [True, False])
def test_int8_linear_adds_the_bias(kernels):
    linear = torch.nn.Linear(96, 200, bias=True)
    layer = Int8Linear(linear)
    layer.decode_kernels = kernels
    dequantized = layer.weight_int8.float() * layer.scales[:, None]
    with torch.inference_mode():
        for x in (torch.randn(1, 1, 96), torch.randn(2, 9, 96)):
            torch.testing.assert_close(layer(x), F.linear(x, dequantized, linear.bias), rtol=1e-5, atol=1e-5)


def test_packed_bf16_linear_adds_the_bias():
    from autarky.serve.packed import PackedBF16Linear

    linear = torch.nn.Linear(96, 200, bias=True)
    with torch.inference_mode():
        x = torch.randn(2, 5, 96)
        expected = F.linear(x.bfloat16(), linear.weight.bfloat16()).float() + linear.bias
        torch.testing.assert_close(PackedBF16Linear(linear)(x), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("family", ["qwen3-bias", "mistral"])
def test_decode_blocks_compute_the_family_features(family, tmp_path: Path):
    """q/k/v/o biases, per-head q/k norms and a head width of its own (qwen3-bias), a sliding window shorter
    than the sequence (mistral): the fused decode steps give the eager model's logits at every position."""
    from fixtures.families import FAMILY_CONFIGS, build_family

    build_family(FAMILY_CONFIGS[family](), tmp_path / family)
    eager, cfg = load_hf_folder(tmp_path / family)
    fused, _ = load_hf_folder(tmp_path / family)
    assert use_decode_kernels(fused)
    tokens = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    logits = []
    with torch.inference_mode():
        for model in (eager, fused):
            cache, tables = _paged_cache(cfg, 1)
            cache.begin(tables, [0], [6])
            steps = [model(tokens[:, :6], cache=cache, logits_at=[5])]
            for t in range(6, 16):  # past the window of 8
                cache.begin(tables, [t], [1])
                steps.append(model(tokens[:, t:t + 1], torch.tensor([[t]]), cache, logits_at=[0]))
            logits.append(torch.stack(steps))
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(logits[0][-1], eager(tokens)[:, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quantize", ["int8", "bf16"])
def test_quantized_serving_keeps_the_families_biases(quantize, tmp_path: Path):
    from fixtures.families import FAMILY_CONFIGS, build_family

    build_family(FAMILY_CONFIGS["qwen2"](), tmp_path / "qwen2")
    eager, cfg = load_hf_folder(tmp_path / "qwen2")
    served, _ = load_served_model(ServedModelSpec(str(tmp_path / "qwen2"), quantize=quantize))
    assert served.layers["0"].attention.wq.bias is not None
    tokens = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected, got = eager(tokens).flatten(), served(tokens).flatten()
    assert F.cosine_similarity(got, expected, dim=0).item() > 0.999


def _unique_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of distinct memory behind the model's weights and biases, oneDNN's packed copies included."""
    memory = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.endswith(("weight", "bias")):
            memory[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    for module in model.modules():
        packed = getattr(module, "packed", None)
        if isinstance(packed, torch.Tensor) and packed.is_mkldnn:
            memory[torch.ops.mkldnn.data_ptr(packed)] = torch.ops.mkldnn._nbytes(packed)
    return sum(memory.values())


def test_served_fp32_weights_are_held_once(tiny_hf_model_dir: Path):
    """The packed oneDNN weight is the only copy: the few-row kernels and a tied embedding read its memory."""
    from autarky.model.config import parameter_count

    model, _ = load_served_model(ServedModelSpec(str(tiny_hf_model_dir)))
    layers = [m for m in model.modules() if isinstance(m, DecodeLinear)]
    assert layers and all(m.packed is not None for m in layers)
    blocked = [m for m in layers if m.blocked]
    padding = sum((m.weight.numel() - m.out_features * m.in_features) * 4 for m in blocked)  # rows up to a block
    held = _unique_weight_bytes(model)
    assert held == parameter_count(model.config) * 4 + padding + 4 * sum(
        m.out_features * m.in_features for m in layers if not m.blocked)  # the packed copies of unblocked layers
    assert len(blocked) == len(layers)  # fp32 here: every layer holds one copy
    if model.config.tie_embeddings:
        assert model.tok_embeddings.weight is model.output.weight
        eager, _ = load_hf_folder(tiny_hf_model_dir)
        tokens = torch.tensor([[0, 5, model.config.vocab_size - 1]])
        torch.testing.assert_close(model.tok_embeddings(tokens), eager.tok_embeddings(tokens), rtol=0, atol=0)
