"""Our own mixtures of experts (family "llama") exported to the transformers class whose routing matches exactly:
sigmoid routing with a trained, non-zero balancing bias, shared experts and dense first layers go to dots1 (with
q/k norm) or GLM-4.5 (without), softmax top-k renormalised to Mixtral; transformers gives the same logits and
greedy tokens, and the folder loads back with the same bias. What no class expresses is refused, naming it."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from autarky.errors import UserError
from autarky.model.config import ModelConfig
from autarky.model.generate import generate_tokens
from autarky.model.hf import load_hf_folder, model_config_from_hf, read_model_config, save_hf_folder
from autarky.model.llama import Llama
from autarky.model.moe import moe_layers, update_expert_bias
from autarky.model.sampling import SamplingParams

VOCAB = 512  # tiny_data_dir's tokenizer
BASE = ModelConfig(vocab_size=VOCAB, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64,
                   rope_theta=10_000.0, n_experts=8, n_active_experts=3, moe_ffn_dim=32)
DEEPSEEK_ROUTED = replace(BASE, n_shared_experts=2, first_k_dense=1, score_func="sigmoid", route_norm=True,
                          route_scale=2.5, qkv_bias=True)


def _trained_balance(cfg: ModelConfig) -> Llama:
    """A random model (weights well beyond init scale) whose balancing bias has moved the way training moves it."""
    model = Llama(cfg)
    model.init_weights(seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("norm.weight"):
                param.copy_(0.15 * torch.randn(param.shape, generator=generator))
    model.train()
    for _ in range(20):
        model(torch.randint(0, VOCAB, (4, 32), generator=generator))
        update_expert_bias(model, rate=0.02)
    return model.eval()


@pytest.mark.parametrize("cfg, family", [
    (replace(DEEPSEEK_ROUTED, qk_norm=True, wo_bias=True), "dots1"),
    (DEEPSEEK_ROUTED, "glm4_moe"),
    (replace(DEEPSEEK_ROUTED, qk_norm=True, wo_bias=True, n_shared_experts=0, first_k_dense=0), "dots1"),
    (replace(BASE, route_norm=True, sliding_window=8), "mixtral"),
])
def test_our_moe_exports_to_the_class_that_routes_the_same(cfg: ModelConfig, family: str, tmp_path: Path,
                                                           tiny_data_dir: Path) -> None:  # fmt: skip
    ours = _trained_balance(cfg)
    biases = {name: layer.expert_bias.clone() for name, layer in moe_layers(ours).items()}
    if cfg.score_func == "sigmoid":
        assert all(b.abs().sum() > 0.1 for b in biases.values())  # the bias changes which experts are chosen
    else:
        for layer in moe_layers(ours).values():
            layer.expert_bias.zero_()  # Mixtral's router has none (a non-zero one is refused, below)
    out = save_hf_folder(ours, tiny_data_dir, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs).__name__ == {"dots1": "Dots1ForCausalLM", "glm4_moe": "Glm4MoeForCausalLM",
                                     "mixtral": "MixtralForCausalLM"}[family]
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = ours(tokens)
        assert (theirs(tokens).logits - logits).abs().max().item() <= 1e-4
    prompt = tokens[:1, :12]
    with torch.no_grad():
        greedy = theirs.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, 12:].tolist()
    assert list(generate_tokens(ours, prompt[0].tolist(), SamplingParams(max_tokens=16, temperature=0))) == greedy
    assert len(set(greedy)) >= 3

    loaded, loaded_cfg = load_hf_folder(out)
    assert loaded_cfg == replace(cfg, family=family, ffn_dim=loaded_cfg.ffn_dim, balance_rate=loaded_cfg.balance_rate)
    if cfg.score_func == "sigmoid":
        for name, layer in moe_layers(loaded).items():
            torch.testing.assert_close(layer.expert_bias, biases[name], rtol=0, atol=0)
    with torch.no_grad():
        assert (loaded(tokens) - logits).abs().max().item() <= 1e-5
    assert read_model_config(save_hf_folder(loaded, out, tmp_path / "again")) == loaded_cfg  # and out again


def test_a_model_no_class_expresses_is_refused(tmp_path: Path, tiny_data_dir: Path) -> None:
    softmax_shared = replace(BASE, n_shared_experts=1)  # no transformers class has ungated shared experts there
    with pytest.raises(UserError, match="n_shared_experts"):
        save_hf_folder(Llama(softmax_shared), tiny_data_dir, tmp_path / "shared")
    mixtral = Llama(replace(BASE, route_norm=True))
    mixtral.init_weights(seed=0)
    with torch.no_grad():
        moe_layers(mixtral)["layers.0.feed_forward"].expert_bias[0] = 0.1
    with pytest.raises(UserError, match="expert_bias is not zero.*dots1"):
        save_hf_folder(mixtral, tiny_data_dir, tmp_path / "biased")
    assert not (tmp_path / "shared").exists() and not (tmp_path / "biased").exists()


@pytest.mark.parametrize("config, field", [
    (transformers.Dots1Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                              n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, n_group=4,
                              topk_group=2), "n_group"),
    (transformers.Dots1Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                              n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, sliding_window=16,
                              max_window_layers=1), "layer_types"),
    (transformers.Glm4MoeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                n_routed_experts=8, num_experts_per_tok=2), "partial_rotary_factor"),
])
def test_routing_and_attention_we_do_not_implement_are_named(config: transformers.PretrainedConfig,
                                                             field: str) -> None:  # fmt: skip
    with pytest.raises(UserError, match=field):
        model_config_from_hf(config.to_dict())


def test_group_limited_routing_over_every_group_is_plain_top_k() -> None:
    config = transformers.Dots1Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                      n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8,
                                      n_group=4, topk_group=4, sliding_window=None)
    cfg = model_config_from_hf(config.to_dict())
    assert (cfg.family, cfg.n_experts, cfg.score_func, cfg.qk_norm) == ("dots1", 8, "sigmoid", True)


def test_glm4_moe_multi_token_prediction_layers_are_skipped_as_transformers_does(tmp_path: Path) -> None:
    """A published GLM-4.5 folder also holds its multi-token-prediction layer (model.layers.<num_hidden_layers>),
    which next-token logits do not use; transformers skips it on load, and so do we."""
    from safetensors.torch import load_file, save_file

    from fixtures.families import FAMILY_CONFIGS, build_family

    hf = build_family(FAMILY_CONFIGS["glm4-moe"](), tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.3.eh_proj.weight"] = torch.randn(64, 128)
    weights["model.layers.3.mlp.experts.0.gate_proj.weight"] = torch.randn(32, 64)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours, _ = load_hf_folder(tmp_path)
    tokens = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4
