"""PEFT's adapter files are the contract: PEFT loads ours with the same logits, we load PEFT's, merges export."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from autarky.adapters import LoraConfig, apply_lora, load_adapter, lora_parameters, merge_lora, save_adapter
from autarky.errors import UserError
from autarky.model.hf import load_hf_folder, save_hf_folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM built by transformers: untied head, grouped-query attention."""
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=112, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, max_position_embeddings=128, rope_theta=10_000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("peft-base") / "hf"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _hf(folder: Path) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(3))


def _adapted(folder: Path, cfg: LoraConfig) -> torch.nn.Module:
    """Our model from `folder` with `cfg`'s adapters and random non-zero B (so the adapters matter)."""
    model, _ = load_hf_folder(folder)
    apply_lora(model, cfg, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in lora_parameters(model).items():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def test_peft_loads_our_adapter_with_the_same_logits(tmp_path: Path, hf_dir: Path) -> None:
    cfg = LoraConfig(rank=4, alpha=12.0, targets="all-linear")
    ours = _adapted(hf_dir, cfg)
    out = save_adapter(ours, cfg, tmp_path / "adapter", base_model=str(hf_dir))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    keys = load_file(str(out / "adapter_model.safetensors")).keys()
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert all(".lora_A." in k or ".lora_B." in k for k in keys)  # no base weight is written
    tokens = _tokens(300)
    hf = peft.PeftModel.from_pretrained(_hf(hf_dir), out).eval()
    with torch.no_grad():
        ours_logits = ours(tokens)
        assert (ours_logits - load_hf_folder(hf_dir)[0](tokens)).abs().max().item() > 1e-2  # the adapter matters
        assert (ours_logits - hf(tokens).logits).abs().max().item() <= 1e-4


def test_we_load_a_peft_written_adapter_with_the_same_logits(tmp_path: Path, hf_dir: Path) -> None:
    torch.manual_seed(5)
    peft_cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                               init_lora_weights=False, task_type="CAUSAL_LM")
    hf = peft.get_peft_model(_hf(hf_dir), peft_cfg).eval()
    hf.save_pretrained(tmp_path / "peft")
    ours, _ = load_hf_folder(hf_dir)
    cfg = load_adapter(ours, tmp_path / "peft")
    assert (cfg.rank, cfg.alpha, cfg.targets) == (4, 8.0, ("wq", "wv", "w2"))
    tokens = _tokens(300)
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4


def test_save_load_round_trip_onto_a_fresh_base(tmp_path: Path, hf_dir: Path) -> None:
    cfg = LoraConfig(rank=2, alpha=4.0, dropout=0.05, targets=["wk", "w1", "w3"], use_rslora=True)
    ours = _adapted(hf_dir, cfg).eval()
    save_adapter(ours, cfg, tmp_path / "a", base_model="tiny")
    fresh, _ = load_hf_folder(hf_dir)
    assert load_adapter(fresh, tmp_path / "a") == cfg
    state = lora_parameters(fresh)
    assert all(torch.equal(state[n], t) for n, t in lora_parameters(ours).items())
    tokens = _tokens(300)
    with torch.no_grad():
        assert torch.equal(fresh(tokens), ours(tokens))
    # Loading onto a model that already has adapters of that rank replaces their weights.
    again = _adapted(hf_dir, cfg)
    load_adapter(again, tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(again(tokens), ours(tokens))


def test_a_merged_export_loads_in_transformers_with_the_same_logits(tmp_path: Path, tiny_hf_model_dir: Path) -> None:
    cfg = LoraConfig(rank=4, alpha=8.0)
    ours = _adapted(tiny_hf_model_dir, cfg)
    tokens = _tokens(512)
    with torch.no_grad():
        adapted = ours(tokens)
    folder = save_hf_folder(merge_lora(ours), tiny_hf_model_dir, tmp_path / "merged")
    with torch.no_grad():
        assert (ours(tokens) - adapted).abs().max().item() <= 1e-4
        assert (_hf(folder)(tokens).logits - adapted).abs().max().item() <= 1e-4


def test_unsupported_or_broken_adapters_are_refused_by_name(tmp_path: Path, hf_dir: Path) -> None:
    cfg = LoraConfig(rank=2, alpha=4.0, targets=["wq"])
    good = save_adapter(_adapted(hf_dir, cfg), cfg, tmp_path / "good", base_model="tiny")
    model, _ = load_hf_folder(hf_dir)
    with pytest.raises(UserError, match="no adapter_config.json"):
        load_adapter(model, tmp_path)
    raw = json.loads((good / "adapter_config.json").read_text())
    for field, value in {"use_dora": True, "bias": "all", "modules_to_save": ["lm_head"], "peft_type": "IA3"}.items():
        bad = tmp_path / f"bad-{field}"
        bad.mkdir()
        (bad / "adapter_config.json").write_text(json.dumps({**raw, field: value}))
        with pytest.raises(UserError, match=field if field != "peft_type" else "peft_type 'IA3'"):
            load_adapter(model, bad)
    weights = load_file(str(good / "adapter_model.safetensors"))
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "adapter_config.json").write_text(json.dumps(raw))
    save_file({**weights, "base_model.model.lm_head.lora_A.weight": torch.zeros(2, 64)},
              str(extra / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="does not have"):
        load_adapter(model, extra)
    (extra / "adapter_config.json").write_text(json.dumps({**raw, "r": 3}))
    save_file(weights, str(extra / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="expected"):
        load_adapter(model, extra)
    with pytest.raises(UserError, match="no LoRA adapters"):
        save_adapter(load_hf_folder(hf_dir)[0], cfg, tmp_path / "none", base_model="tiny")
    assert not (tmp_path / "none").exists()
