"""Incremental detokenization: deltas never split a character or a stop string, and add up to the text."""

from __future__ import annotations

from pathlib import Path

import pytest

from autarky.model.tokenizer import IncrementalText
from autarky.serve.text import TextCodec


@pytest.fixture(scope="module")
def codec(tiny_hf_model_dir: Path) -> TextCodec:
    return TextCodec.from_folder(tiny_hf_model_dir)


def push_all(text: IncrementalText, ids: list[int]) -> tuple[list[str], bool]:
    deltas = []
    for token in ids:
        delta, stopped = text.push(token)
        deltas.append(delta)
        if stopped:
            return deltas, True
    deltas.append(text.finish())
    return deltas, False


def test_deltas_add_up_to_the_decoded_text(codec):
    source = "def héllo(wörld):\n    return '✓ done' # 日本語\n"
    ids = codec.encode(source, add_special_tokens=False)
    deltas, stopped = push_all(IncrementalText(codec.decode, ()), ids)
    assert not stopped
    assert "".join(deltas) == codec.decode(ids) == source
    assert all("\ufffd" not in d for d in deltas)  # multi-byte characters are released whole


def test_stop_string_across_tokens_is_cut_and_never_leaked(codec):
    source = "alpha = 1\nbeta = 2\nSTOP here\ngamma = 3\n"
    ids = codec.encode(source, add_special_tokens=False)
    deltas, stopped = push_all(IncrementalText(codec.decode, ("STOP",)), ids)
    assert stopped
    released = "".join(deltas)
    assert released == "alpha = 1\nbeta = 2\n"
    assert not any("ST" in d for d in deltas)


def test_held_back_prefix_is_released_when_it_is_not_a_stop(codec):
    source = "x = 1 # note\ny = 2"
    ids = codec.encode(source, add_special_tokens=False)
    deltas, stopped = push_all(IncrementalText(codec.decode, ("# stop",)), ids)
    assert not stopped
    assert "".join(deltas) == source


def test_chat_prompt_uses_the_template(codec):
    ids = codec.chat_ids([{"role": "user", "content": "hi"}])
    text = codec.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert codec.eos_token_ids == {0, 2}
