"""The MoE feed-forward: one expert is the dense layer, the grouped matmul is the per-expert loop, the balancing bias
evens out a skewed router, and a config without experts is the dense model it always was."""

from dataclasses import replace

import pytest
import torch

from autarky.model.config import ModelConfig, active_parameter_count, parameter_count
from autarky.model.llama import Llama
from autarky.model.moe import FeedForward, GroupedExperts, MoE, aux_loss, load_summary, update_expert_bias

DENSE = ModelConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32)
SPARSE = replace(DENSE, n_experts=8, n_active_experts=3, n_shared_experts=2, moe_ffn_dim=16, first_k_dense=1)


def test_one_expert_moe_equals_the_dense_layer() -> None:
    torch.manual_seed(0)
    cfg = replace(DENSE, n_experts=1, n_active_experts=1, moe_ffn_dim=48, route_norm=True)
    moe, dense = MoE(cfg), FeedForward(32, 48)
    with torch.no_grad():
        for name in ("w1", "w2", "w3"):
            getattr(moe.experts, name).copy_(getattr(dense, name).weight[None])
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(moe(x), dense(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_matmul_equals_the_loop(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    experts = GroupedExperts(4, 32, 16)
    for w in experts.parameters():
        torch.nn.init.normal_(w, std=0.1)
    x = torch.randn(20, 32, dtype=dtype)
    counts = torch.tensor([7, 0, 9, 4])  # an expert with no tokens too
    torch.testing.assert_close(experts.forward_grouped(x, counts), experts.forward_loop(x, counts),
                               rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)


def test_compiled_fp32_moe_on_cpu_equals_eager() -> None:
    """inductor lowers _grouped_mm only in bf16 on CPU: a compiled fp32 MoE (train --compile) takes the loop."""
    torch.manual_seed(0)
    moe = MoE(SPARSE)
    for w in moe.parameters():
        torch.nn.init.normal_(w, std=0.1)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(torch.compile(moe)(x), moe(x), rtol=0, atol=1e-5)


def test_model_with_experts_builds_counts_and_routes_every_token() -> None:
    model = Llama(SPARSE)
    model.init_weights(seed=0)
    assert type(model.layers["0"].feed_forward) is FeedForward
    assert all(type(model.layers[i].feed_forward) is MoE for i in ("1", "2"))
    assert sum(p.numel() for p in model.parameters()) == parameter_count(SPARSE)
    unused = 2 * (8 - 3) * 3 * 32 * 16
    assert active_parameter_count(SPARSE) == parameter_count(SPARSE) - unused
    model.train()
    model(torch.randint(0, 64, (2, 10)))
    loads = update_expert_bias(model, rate=0.0)
    assert set(loads) == {"layers.1.feed_forward", "layers.2.feed_forward"}
    assert all(abs(sum(v) - 1) < 1e-6 for v in loads.values())
    summary = load_summary(loads)
    assert summary["dropped_tokens"] == 0 and summary["expert_imbalance"] >= 1.0
    assert len(summary["expert_load"]) == 8
    assert "expert_bias" in "".join(model.state_dict())  # persistent: resume keeps the balance


def test_dense_config_is_unchanged() -> None:
    assert DENSE.to_dict() == replace(DENSE).to_dict()
    assert "n_experts" not in DENSE.to_dict()
    assert SPARSE.to_dict()["n_experts"] == 8
    assert ModelConfig(**SPARSE.to_dict()) == SPARSE
    assert active_parameter_count(DENSE) == parameter_count(DENSE)


def test_balancing_bias_moves_toward_uniform_on_skewed_routing() -> None:
    torch.manual_seed(0)
    cfg = replace(DENSE, n_experts=8, n_active_experts=2, moe_ffn_dim=16)
    moe = MoE(cfg).train()
    with torch.no_grad():
        moe.router.weight.normal_(std=0.02)
        moe.router.weight[0] += 0.05 # experts 0 and 1 favoured by every token with a positive mean
        moe.router.weight[1] += 0.04
        for w in moe.experts.parameters():
            w.normal_(std=0.02)
    x = torch.randn(512, 32) + 0.5

    def imbalance() -> float:
        moe(x)
        return load_summary(update_expert_bias(moe, rate=0.0))["expert_imbalance"]

    before = imbalance()
    for _ in range(150):
        moe(x)
        update_expert_bias(moe, rate=0.003)
    after = imbalance()
    assert before > 3.0
    assert after < 1.2
    assert moe.expert_bias[0] < 0 and moe.expert_bias[1] < 0  # the favoured experts are pushed down
    assert abs(moe.expert_bias.sum().item()) < 1e-4  # centred


def test_aux_loss_is_collected_when_on() -> None:
    cfg = replace(SPARSE, aux_loss_coef=0.01)
    model = Llama(cfg)
    model.init_weights(seed=0)
    model.train()
    model(torch.randint(0, 64, (2, 10)))
    loss = aux_loss(model)
    assert loss is not None and loss.requires_grad and 0 < loss.item() < 0.1
    assert aux_loss(model) is None  # taken once
    assert aux_loss(Llama(SPARSE)) is None


def test_invalid_moe_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_active_experts"):
        replace(DENSE, n_experts=4, n_active_experts=5, moe_ffn_dim=8)
    with pytest.raises(ValueError, match="score_func"):
        replace(DENSE, n_experts=4, n_active_experts=2, moe_ffn_dim=8, score_func="relu")


# Totals of the published Qwen3-MoE models (their safetensors indexes); checked below by transformers building
# Qwen3MoeForCausalLM from the config.json our writer produces, on the meta device. Active: the total less the
# 120 of 128 experts a token skips in every layer.
QWEN3_MOE = {"qwen3-30b-a3b": (30_532_122_624, 3_353_032_704), "qwen3-235b-a22b": (235_093_634_560, 22_190_763_520)}


@pytest.mark.parametrize("name", sorted(QWEN3_MOE))
def test_qwen3_moe_presets_match_published_and_transformers_counts(name: str) -> None:
    import transformers

    from autarky.model.hf import hf_config_dict, model_config_from_hf
    from autarky.model.sizes import build_on_meta, preset

    cfg = preset(name)
    total, active = QWEN3_MOE[name]
    assert (parameter_count(cfg), active_parameter_count(cfg)) == (total, active)
    assert sum(p.numel() for p in build_on_meta(cfg).parameters()) == total
    written = hf_config_dict(cfg, None, None, torch.bfloat16)
    assert model_config_from_hf(written) == replace(cfg, balance_rate=0.0)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**written))
    assert type(hf).__name__ == "Qwen3MoeForCausalLM"
    assert hf.num_parameters() == total


def test_model_info_gives_total_and_active_parameters_of_moe_presets() -> None:
    import json

    from typer.testing import CliRunner

    from autarky.cli import app

    def info(name: str) -> dict:
        result = CliRunner().invoke(app, ["model", "info", name, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    deepseek = info("deepseek-v3-like")  # published 671B / 37B; MLA swapped for our attention (see sizes.py)
    assert 665e9 < deepseek["parameters"] < 677e9 and 36e9 < deepseek["active_parameters"] < 38e9
    assert (deepseek["n_experts"], deepseek["n_active_experts"], deepseek["first_k_dense"]) == (256, 8, 3)
    nano = info("moe-nano")
    assert nano["parameters"] > nano["active_parameters"] > 0.5 * nano["parameters"]
    assert nano["train_flops_per_token"] < 6 * nano["parameters"]  # compute follows the active parameters
    dense = info("nano")
    assert dense["active_parameters"] == dense["parameters"] and "n_experts" not in dense


def test_export_refuses_what_qwen3_moe_cannot_express(tmp_path, tiny_data_dir) -> None:
    from autarky.errors import UserError
    from autarky.model.hf import model_config_from_hf, save_hf_folder

    qwen = replace(SPARSE, family="qwen3_moe", qk_norm=True, n_shared_experts=0)
    model = Llama(qwen)
    model.init_weights(seed=0)
    with torch.no_grad():
        model.layers["1"].feed_forward.expert_bias[0] = 0.1
    with pytest.raises(UserError, match="expert_bias is not zero"):
        save_hf_folder(model, tiny_data_dir, tmp_path / "biased")
    with pytest.raises(UserError, match="n_shared_experts"):
        save_hf_folder(Llama(replace(qwen, n_shared_experts=1)), tiny_data_dir, tmp_path / "shared")
    with pytest.raises(UserError, match="n_experts"):
        save_hf_folder(Llama(SPARSE), tiny_data_dir, tmp_path / "llama")  # a Llama config.json has no experts
    config = {"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3,
              "num_attention_heads": 4, "intermediate_size": 48, "num_experts": 4, "num_experts_per_tok": 2}
    assert model_config_from_hf(config).first_k_dense == 0
    assert model_config_from_hf({**config, "mlp_only_layers": [0, 1]}).first_k_dense == 2
    with pytest.raises(UserError, match="mlp_only_layers"):
        model_config_from_hf({**config, "mlp_only_layers": [1]})
    with pytest.raises(UserError, match="decoder_sparse_step"):
        model_config_from_hf({**config, "decoder_sparse_step": 2})
