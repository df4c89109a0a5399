"""Preset shapes against published parameter counts, built on the meta device; `autarky model info`."""

import json

import pytest
import torch
from typer.testing import CliRunner

from autarky.cli import app
from autarky.errors import UserError
from autarky.model.llama import parameter_count
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
