"""Model inputs: Hugging Face configs (dense and mixture-of-experts) and raw parameter counts."""

import json

import pytest

from autarky.errors import UserError
from autarky.plan.shape import from_hf_config, from_params, from_preset

LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
             "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": False}
MIXTRAL = {"architectures": ["MixtralForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
           "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2}


def test_hf_config_of_llama3_8b_matches_the_preset(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    shape = from_hf_config(tmp_path, seq_len=8192)  # a folder works as well as the file
    assert shape.params == from_preset("8b").params
    assert shape.seq_len == 8192 and shape.kv_heads == 8


def test_mixtral_config_counts_total_and_active_parameters(tmp_path):
    """Mistral AI, "Mixtral of experts" (Dec 2023): 46.7B total, 12.9B used per token (±0.5%)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MIXTRAL))
    shape = from_hf_config(path)
    assert shape.params == pytest.approx(46.7e9, rel=0.005)
    assert shape.active_params == pytest.approx(12.9e9, rel=0.005)
    assert shape.is_moe and 0 < shape.expert_params < shape.params


def test_hf_config_missing_a_key_is_a_user_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UserError, match="lacks 'num_hidden_layers'"):
        from_hf_config(path)


def test_raw_params_estimate_a_llama_like_shape():
    shape = from_params(405e9)
    assert shape.layers == pytest.approx(126, abs=3) and shape.hidden == pytest.approx(16384, rel=0.05)
    assert "estimated" in shape.shape_source


def test_raw_moe_needs_active_params():
    with pytest.raises(UserError, match="--active-params"):
        from_params(671e9, experts=256, active_experts=8)
