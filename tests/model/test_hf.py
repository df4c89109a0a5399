"""Hugging Face interop: our model → HF folder → transformers gives the same logits, and back."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from autarky.errors import UserError
from autarky.model.config import ModelConfig
from autarky.model.hf import eos_token_ids, load_hf_folder, read_model_config, save_hf_folder
from autarky.model.llama import Llama
from autarky.model.tokenizer import load_hf_folder_tokenizer, render_chat


def _tokens(vocab: int, shape: tuple[int, int] = (2, 37)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(7))


def test_transformers_loads_our_export_with_identical_logits(tiny_hf_model_dir: Path) -> None:
    ours, cfg = load_hf_folder(tiny_hf_model_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_hf_model_dir).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    tokens = _tokens(cfg.vocab_size)
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= 1e-4


def test_untied_model_round_trips_through_transformers(tmp_path: Path, tiny_data_dir: Path) -> None:
    cfg = ModelConfig(vocab_size=512, dim=96, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=160, max_seq_len=64,
                      rope_theta=50_000.0, norm_eps=1e-6, tie_embeddings=False)
    model = Llama(cfg)
    model.init_weights(seed=3)
    folder = save_hf_folder(model, tiny_data_dir, tmp_path / "untied")
    assert read_model_config(folder) == cfg
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not hf.config.tie_word_embeddings
    tokens = _tokens(cfg.vocab_size)
    with torch.no_grad():
        expected = model(tokens)
        assert (expected - hf(tokens).logits).abs().max().item() <= 1e-4
        reloaded, _ = load_hf_folder(folder)
        assert torch.equal(reloaded(tokens), expected)


def test_folder_written_by_transformers_loads_into_our_llama(tmp_path: Path) -> None:
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=1,
        num_hidden_layers=3, max_position_embeddings=128, rope_theta=20_000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours, cfg = load_hf_folder(tmp_path / "hf")
    assert (cfg.n_kv_heads, cfg.rope_theta, cfg.tie_embeddings) == (1, 20_000.0, False)
    tokens = _tokens(300)
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4


def test_bfloat16_export_halves_the_weights(tmp_path: Path, tiny_hf_model_dir: Path) -> None:
    model, _ = load_hf_folder(tiny_hf_model_dir)
    folder = save_hf_folder(model, tiny_hf_model_dir, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded, _ = load_hf_folder(folder, dtype=torch.bfloat16)
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16
    size = (folder / "model.safetensors").stat().st_size
    assert size < 0.55 * (tiny_hf_model_dir / "model.safetensors").stat().st_size


def test_tokenizer_and_chat_template_agree_with_transformers(tiny_hf_model_dir: Path) -> None:
    ours = load_hf_folder_tokenizer(tiny_hf_model_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(tiny_hf_model_dir)
    text = "def add(a, b):\n    return a + b  # ünïcödé\n"
    assert theirs(text)["input_ids"] == ours.encode(text).ids
    assert theirs.decode(ours.encode(text).ids) == text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = render_chat(tiny_hf_model_dir, messages)
    assert rendered == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert eos_token_ids(tiny_hf_model_dir) == [0, 2]


def test_export_never_overwrites_an_existing_folder(tmp_path: Path, tiny_hf_model_dir: Path) -> None:
    model, _ = load_hf_folder(tiny_hf_model_dir)
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        save_hf_folder(model, tiny_hf_model_dir, target)
    assert (target / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary folder left behind


def _copy_with_config(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "not a Llama model"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "rope_parameters": None}, "rope scaling 'llama3'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope scaling 'yarn'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"head_dim": 64}, "head_dim 64"),
        ({"num_hidden_layers": 5}, "weights do not match"),
        ({"vocab_size": 1000}, "has shape"),
    ],
)
def test_unsupported_or_inconsistent_folders_are_refused(tmp_path: Path, tiny_hf_model_dir: Path,
                                                         changes: dict, message: str) -> None:
    folder = _copy_with_config(tiny_hf_model_dir, tmp_path / "bad", **changes)
    with pytest.raises(UserError, match=message):
        load_hf_folder(folder)


def test_folder_without_config_or_weights_is_refused(tmp_path: Path, tiny_hf_model_dir: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        load_hf_folder(tmp_path)
    folder = _copy_with_config(tiny_hf_model_dir, tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_hf_folder(folder)
