"""The open families, each as transformers builds it from its config.json: a tiny random model saved by
`save_pretrained` loads into our Llama with the same logits (fp32, 1e-4), greedy-generates the same tokens, and
round-trips through our HF writer into a folder transformers loads as the same family with the same logits."""

from pathlib import Path

import pytest
import torch
import transformers

from autarky.errors import UserError
from autarky.model.generate import generate_tokens
from autarky.model.hf import (
    eos_token_ids,
    load_hf_folder,
    model_config_from_hf,
    read_model_config,
    save_hf_folder,
)
from autarky.model.sampling import SamplingParams
from fixtures.families import COMMON, FAMILY_CONFIGS, FAMILY_VOCAB, build_family

CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM",
           "dots1": "Dots1ForCausalLM", "glm4_moe": "Glm4MoeForCausalLM"}


@pytest.fixture(scope="module", params=list(FAMILY_CONFIGS))
def family(request, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp(request.param) / "hf"
    return request.param, build_family(FAMILY_CONFIGS[request.param](), folder), folder


def _tokens(shape: tuple[int, int] = (2, 40)) -> torch.Tensor:
    return torch.randint(0, FAMILY_VOCAB, shape, generator=torch.Generator().manual_seed(7))


def test_logits_match_transformers(family) -> None:
    name, hf, folder = family
    ours, cfg = load_hf_folder(folder)
    assert cfg.family == hf.config.model_type
    tokens = _tokens()
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(family) -> None:
    _, hf, folder = family
    ours, _ = load_hf_folder(folder)
    prompt = _tokens((1, 12))
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, 12:].tolist()
    mine = list(generate_tokens(ours, prompt[0].tolist(), SamplingParams(max_tokens=24, temperature=0)))
    assert mine == theirs
    assert len(set(mine)) >= 3  # a varied sequence, so the comparison means something


def test_export_round_trips_through_transformers(family, tmp_path: Path, tiny_data_dir: Path) -> None:
    _, hf, folder = family
    ours, cfg = load_hf_folder(folder)
    out = save_hf_folder(ours, tiny_data_dir, tmp_path / "export")
    assert read_model_config(out) == cfg
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == CLASSES[cfg.family] == type(hf).__name__
    tokens = _tokens()
    with torch.no_grad():
        assert (reloaded(tokens).logits - ours(tokens)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("change, field", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "yarn"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}}, "low_freq_factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "gemma", "architectures": ["GemmaForCausalLM"]}, "gemma"),
])
def test_unsupported_fields_are_named(change: dict, field: str) -> None:
    config = {**transformers.LlamaConfig(**COMMON).to_dict(), **change}
    with pytest.raises(UserError, match=field):
        model_config_from_hf(config)


def test_qwen_layers_with_their_own_sliding_window_are_refused() -> None:
    config = transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with pytest.raises(UserError, match="use_sliding_window"):
        model_config_from_hf(config.to_dict())


def test_a_family_that_cannot_express_the_model_is_refused(tmp_path: Path, tiny_data_dir: Path) -> None:
    from dataclasses import replace

    from autarky.model.llama import Llama

    cfg = model_config_from_hf(transformers.Qwen3Config(**COMMON, head_dim=24).to_dict())
    model = Llama(replace(cfg, family="mistral"))
    with pytest.raises(UserError, match="MistralForCausalLM"):
        save_hf_folder(model, tiny_data_dir, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_export_keeps_the_source_folders_end_ids(tmp_path: Path, tiny_data_dir: Path) -> None:
    """A model folder given as the tokenizer source (as when exporting a fine-tuned open model) keeps the eos ids
    its generation config declares besides the tokenizer's own."""
    import json

    source = tmp_path / "source"
    build_family(FAMILY_CONFIGS["llama3"](), source, tokenizer_dir=tiny_data_dir)
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    ours, _ = load_hf_folder(source)
    out = save_hf_folder(ours, source, tmp_path / "export")
    assert eos_token_ids(out) == [0, 2, 7]
