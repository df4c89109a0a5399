"""Streaming detokenization and chat rendering over an HF folder's tokenizer files."""

from pathlib import Path

import pytest

from autarky.errors import UserError
from autarky.model.tokenizer import IncrementalText, load_hf_folder_tokenizer, render_chat


def test_incremental_text_never_emits_half_a_character(tiny_hf_model_dir: Path) -> None:
    tokenizer = load_hf_folder_tokenizer(tiny_hf_model_dir)
    text = "x = '日本語 ünï'  # ok\n"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text) // 2  # rare characters are split into byte tokens
    decoder = IncrementalText(lambda seen: tokenizer.decode(seen, skip_special_tokens=False))
    pieces = [decoder.push(token)[0] for token in ids] + [decoder.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_folder_without_a_chat_template_is_refused_for_chat(tmp_path: Path, tiny_hf_model_dir: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((tiny_hf_model_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(UserError, match="no chat template"):
        render_chat(tmp_path, [{"role": "user", "content": "hi"}])


def test_template_errors_become_user_errors(tmp_path: Path, tiny_hf_model_dir: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((tiny_hf_model_dir / "tokenizer.json").read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('only user turns') }}")
    with pytest.raises(UserError, match="only user turns"):
        render_chat(tmp_path, [{"role": "system", "content": "x"}])
