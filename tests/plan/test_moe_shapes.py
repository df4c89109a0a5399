"""The planner's mixture-of-experts shapes: MoE presets and a Qwen3-MoE config.json count exactly as the model
does (dense layers and shared experts included)."""

import json
from pathlib import Path

import torch

from autarky.model.config import active_parameter_count, parameter_count
from autarky.model.hf import hf_config_dict
from autarky.model.sizes import preset
from autarky.plan.shape import from_hf_config, from_preset


def test_moe_presets_plan_with_their_exact_counts() -> None:
    for name in ("moe-nano", "qwen3-30b-a3b", "deepseek-v3-like"):
        shape = from_preset(name)
        assert (shape.params, shape.active_params) == (parameter_count(preset(name)),
                                                       active_parameter_count(preset(name)))
        assert shape.experts == preset(name).n_experts and shape.active_experts == preset(name).n_active_experts


def test_qwen3_moe_config_json_plans_as_the_model(tmp_path: Path) -> None:
    cfg = preset("qwen3-30b-a3b")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf_config_dict(cfg, None, None, torch.bfloat16)))
    shape = from_hf_config(path)
    assert (shape.params, shape.active_params) == (30_532_122_624, 3_353_032_704)
    written = {**json.loads(path.read_text()), "mlp_only_layers": [0, 1]}  # two dense layers of intermediate_size
    path.write_text(json.dumps(written))
    dense_two = from_hf_config(path)
    per_layer = 128 * 3 * 2048 * 768 + 2048 * 128 - 3 * 2048 * 6144
    assert dense_two.params == 30_532_122_624 - 2 * per_layer


def test_mixtral_dots1_and_glm4_moe_config_json_plan_as_transformers_counts(tmp_path: Path) -> None:
    """Mixtral (intermediate_size is an expert's), dots1 (q/k norms, shared experts, dense first layer) and
    GLM-4.5 (q/k/v biases without an output bias) count exactly as transformers builds them."""
    import transformers

    from fixtures.families import FAMILY_CONFIGS

    for name in ("mixtral", "dots1", "glm4-moe"):
        config = FAMILY_CONFIGS[name]()
        config.to_json_file(tmp_path / f"{name}.json")
        with torch.device("meta"):
            hf = transformers.AutoModelForCausalLM.from_config(config)
        shape = from_hf_config(tmp_path / f"{name}.json")
        assert shape.params == hf.num_parameters(), name
        assert shape.experts == config.num_local_experts and shape.active_experts == config.num_experts_per_tok
