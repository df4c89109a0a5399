"""The tokenizer: exact byte-level round trips, fixed special ids, and parity with transformers.AutoTokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from autarky.data import CHAT_TEMPLATE, SPECIAL_TOKENS, load_tokenizer, open_tokens, read_manifest

AWKWARD_TEXTS = [
    "",
    " ",
    "def f(x):\n    return x  # comment\n",
    "\t\tindented\r\n\r\nwindows line endings\r\n",
    "   leading and trailing spaces   ",
    "\n\n\n",
    "héllo wörld — naïve café ñ ß",
    "日本語のテキスト 中文 한국어",
    "emoji 🎉👩‍👩‍👧 and a flag 🇫🇷",
    "\x00\x01 control \x7f chars \u200b zero-width",
    "combining: e\u0301 vs é, NFKC bait: ﬁ ①",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_data_dir: Path):
    return load_tokenizer(tiny_data_dir)


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_data_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_data_dir))


def test_special_tokens_have_fixed_ids(tokenizer) -> None:
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert SPECIAL_TOKENS == ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>").ids[0] == 1
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>").ids[-1] == 2
    assert tokenizer.encode("a<|endoftext|>b").ids.count(0) == 1


def test_vocab_size_matches_manifest(tokenizer, tiny_data_dir: Path) -> None:
    assert tokenizer.get_vocab_size() == read_manifest(tiny_data_dir)["vocab_size"] == 512


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_round_trip_awkward_text(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_round_trip_any_text(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text


def test_bpe_learned_merges_compress_python(tokenizer, tiny_corpus_dir: Path) -> None:
    source = (tiny_corpus_dir / "textwrap.py").read_text()
    assert len(tokenizer.encode(source).ids) < 0.6 * len(source.encode())


def test_shards_decode_back_to_documents(tokenizer, tiny_data_dir: Path, tiny_corpus_dir: Path) -> None:
    manifest = read_manifest(tiny_data_dir)
    for split in ("train", "val"):
        tokens = open_tokens(tiny_data_dir, split).tolist()
        docs = [d for d in manifest["documents"] if d["split"] == split]
        # one separator after each document, none inside
        assert tokens[-1] == 0 and tokens.count(0) == len(docs)
        start = 0
        for doc in docs:
            ids = tokens[start : start + doc["tokens"]]
            assert tokens[start + doc["tokens"]] == 0
            assert (
                tokenizer.decode(ids, skip_special_tokens=False)
                == (tiny_corpus_dir / doc["relpath"]).read_text()
            )
            start += doc["tokens"] + 1
        assert start == len(tokens)


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_auto_tokenizer_encodes_identically(tokenizer, hf_tokenizer, text: str) -> None:
    ours = tokenizer.encode(text).ids
    assert hf_tokenizer.encode(text) == ours
    assert hf_tokenizer(text)["input_ids"] == ours
    assert hf_tokenizer.decode(ours) == text


def test_auto_tokenizer_parity_on_corpus(tokenizer, hf_tokenizer, tiny_corpus_dir: Path) -> None:
    for path in sorted(tiny_corpus_dir.rglob("*.py"))[:10]:
        text = path.read_text()
        assert hf_tokenizer.encode(text) == tokenizer.encode(text).ids, path


def test_auto_tokenizer_special_tokens_and_chat_template(hf_tokenizer, tiny_data_dir: Path) -> None:
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token, hf_tokenizer.pad_token) == ("<|endoftext|>",) * 3
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (0, 0, 0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list?"}]
    rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSort a list?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = hf_tokenizer.encode(rendered)
    assert ids.count(1) == 3 and ids.count(2) == 2
    assert json.loads((tiny_data_dir / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
