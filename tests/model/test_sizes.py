"""Preset shapes against published parameter counts, built on the meta device; `autarky model info`."""

import json

import pytest
import torch
from typer.testing import CliRunner

from autarky.cli import app
from autarky.errors import UserError
from autarky.model.config import parameter_count
from autarky.model.sizes import PRESETS, build_on_meta, preset

# Published totals (embeddings included): Llama 3.1 8B/70B/405B from the released configs / safetensors
# index totals (arXiv:2407.21783), Llama 3.2 1B from its release (tied embeddings).
PUBLISHED = {
    "1b": 1_235_814_400,
    "8b": 8_030_261_248,
    "70b": 70_553_706_496,
    "405b": 405_853_388_800,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_large_presets_match_published_parameter_counts(name: str) -> None:
    model = build_on_meta(preset(name))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


@pytest.mark.parametrize(("name", "low", "high"), [("nano", 1e6, 3e6), ("micro", 10e6, 20e6), ("small", 80e6, 140e6)])
def test_small_presets_are_in_their_advertised_range(name: str, low: float, high: float) -> None:
    model = build_on_meta(preset(name))
    counted = sum(p.numel() for p in model.parameters())
    assert low <= counted <= high
    assert counted == parameter_count(preset(name))


def test_meta_build_allocates_nothing_even_for_405b() -> None:
    model = build_on_meta(PRESETS["405b"])
    assert model.tok_embeddings.weight.device == torch.device("meta")


def test_unknown_preset_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        preset("huge")


def test_model_info_json() -> None:
    result = CliRunner().invoke(app, ["model", "info", "8b", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["parameters"] == PUBLISHED["8b"]
    assert (info["n_layers"], info["dim"], info["n_heads"], info["n_kv_heads"]) == (32, 4096, 32, 8)
    # 6 N (non-embedding matmul params incl. the output projection) + attention term, at the 8,192 context.
    n_matmul = PUBLISHED["8b"] - 128_256 * 4096
    assert info["train_flops_per_token"] == 6 * n_matmul + 12 * 32 * 4096 * 8192


def test_model_info_rejects_unknown_preset() -> None:
    result = CliRunner().invoke(app, ["model", "info", "huge"])
    assert result.exit_code == 2
    assert "unknown preset" in result.output


# The open families' published models: totals from the model cards / safetensors indexes, and recomputed here by
# transformers building each config.json (as our HF writer writes it) on the meta device.
FAMILY_PUBLISHED = {
    "llama3.2-1b": 1_235_814_400,
    "llama3.1-8b": 8_030_261_248,
    "mistral-7b": 7_248_023_552,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-0.6b": 596_049_920,
    "qwen3-8b": 8_190_735_360,
}


@pytest.mark.parametrize("name", sorted(FAMILY_PUBLISHED))
def test_family_presets_match_published_and_transformers_counts(name: str) -> None:
    import transformers

    from autarky.model.hf import hf_config_dict, model_config_from_hf

    cfg = preset(name)
    assert parameter_count(cfg) == FAMILY_PUBLISHED[name]
    assert sum(p.numel() for p in build_on_meta(cfg).parameters()) == FAMILY_PUBLISHED[name]
    written = hf_config_dict(cfg, None, None, torch.bfloat16)
    assert model_config_from_hf(written) == cfg
    hf_config = transformers.AutoConfig.for_model(**written)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert type(hf).__name__ == written["architectures"][0]
    assert hf.num_parameters() == FAMILY_PUBLISHED[name]


def test_overriding_a_presets_width_keeps_a_derived_head_dim_derived() -> None:
    assert preset("nano", dim=256).head_dim == 64
    assert preset("qwen3-0.6b", dim=2048).head_dim == 128  # published explicitly: it stays


def test_model_info_of_a_family_preset() -> None:
    result = CliRunner().invoke(app, ["model", "info", "qwen3-0.6b", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["parameters"] == FAMILY_PUBLISHED["qwen3-0.6b"]
    assert (info["head_dim"], info["qk_norm"], info["family"]) == (128, True, "qwen3")
