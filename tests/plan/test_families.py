"""The open families' published shapes in the planner: presets, and their config.json through --hf-config."""

import json

import pytest
import torch
from typer.testing import CliRunner

from autarky.cli import app
from autarky.model.config import parameter_count
from autarky.model.hf import hf_config_dict
from autarky.model.sizes import preset
from autarky.plan.shape import from_hf_config, from_preset

FAMILY_PRESETS = ["llama3.2-1b", "llama3.1-8b", "mistral-7b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen3-0.6b", "qwen3-8b"]


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_hf_config_of_each_family_counts_what_the_preset_counts(name: str, tmp_path) -> None:
    cfg = preset(name)
    written = hf_config_dict(cfg, None, None, torch.bfloat16)
    # As published: the fields only transformers reads are dropped, the config stays a family config.json.
    for key in ("rope_parameters", "torch_dtype", "use_cache"):
        written.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(written))
    shape = from_hf_config(tmp_path)
    assert shape.params == from_preset(name).params == parameter_count(cfg)
    assert shape.head_dim == cfg.head_dim and shape.seq_len == cfg.max_seq_len


def test_qwen25_half_billion_counts_its_biases() -> None:
    assert from_preset("qwen2.5-0.5b").params == 494_032_768  # the model card's total


@pytest.mark.parametrize("name", ["qwen3-0.6b", "mistral-7b"])
def test_plan_takes_a_family_preset(name: str) -> None:
    result = CliRunner().invoke(app, ["plan", "--preset", name, "--gpus", "8", "--seq-len", "4096", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"]["params"] == parameter_count(preset(name))
