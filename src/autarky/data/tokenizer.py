"""The byte-level BPE tokenizer: trained with Hugging Face `tokenizers`, saved so `transformers` loads it as is.

Byte-level with no normaliser means every string round-trips exactly (decode with skip_special_tokens=False).
The three special tokens have fixed ids that the other stages rely on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from autarky.errors import UserError

# The special tokens (ids 0, 1, 2 in this order) and the chat template belong to the model's chat format.
from autarky.model.chat import CHAT_TEMPLATE as CHAT_TEMPLATE
from autarky.model.chat import ENDOFTEXT as ENDOFTEXT
from autarky.model.chat import IM_END as IM_END
from autarky.model.chat import IM_START as IM_START
from autarky.model.chat import SPECIAL_TOKENS as SPECIAL_TOKENS

EOT_ID = 0

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int, length: int | None = None) -> Tokenizer:
    """A byte-level BPE of at most `vocab_size` tokens (fewer if the texts cannot support more merges)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, f"{token} must have id {expected_id}"
    return tokenizer


def tokenizer_config() -> dict:
    """tokenizer_config.json: what `transformers.AutoTokenizer` needs beyond tokenizer.json."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        # Byte-level decoding is exact; transformers' space clean-up would break the round trip.
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def write_tokenizer_files(tokenizer: Tokenizer, folder: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json into `folder` (a staging folder: not atomic on its own)."""
    tokenizer.save(str(folder / TOKENIZER_FILE))
    (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tokenizer_config(), indent=2) + "\n")


def encode_corpus_texts(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of raw corpus texts: special-token strings inside them are treated as plain text.

    A document that happens to contain "<|im_start|>" must not inject a control token into the training stream.
    """
    tokenizer.encode_special_tokens = True
    try:
        return [enc.ids for enc in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        tokenizer.encode_special_tokens = False


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (half the bytes of uint32), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class BuiltTokenizer:
    """The tokenizer a data dir is encoded with, once its files are in the staging folder."""

    tokenizer: Tokenizer
    eot_id: int
    sha256: str  # of tokenizer.json
    special_tokens: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def dtype(self) -> np.dtype:
        return shard_dtype(self.vocab_size)

    @classmethod
    def trained(cls, folder: Path) -> BuiltTokenizer:
        """The tokenizer `TokenizerSource.train` wrote into `folder`."""
        specials = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        return cls(Tokenizer.from_file(str(folder / TOKENIZER_FILE)), EOT_ID, _sha256(folder / TOKENIZER_FILE), specials)

    def files(self, folder: Path) -> dict[str, dict]:
        return {
            name: {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
            for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)
        }


@dataclass(frozen=True)
class TokenizerSource:
    """Where a build's tokenizer comes from: trained on the build's sample, or an existing folder's."""

    folder: Path | None
    sha256: str | None

    def train(self, texts: Iterable[str], vocab_size: int, length: int, staging: Path) -> BuiltTokenizer:
        write_tokenizer_files(train_tokenizer(texts, vocab_size, length=length), staging)
        return BuiltTokenizer.trained(staging)

    def install(self, staging: Path) -> BuiltTokenizer:
        """Copy the folder's tokenizer files (a base model's) into `staging`; documents end with its EOS."""
        assert self.folder is not None
        shutil.copyfile(self.folder / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        config_path = self.folder / TOKENIZER_CONFIG_FILE
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        (staging / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config or {"tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
        tokenizer = Tokenizer.from_file(str(staging / TOKENIZER_FILE))
        eos = config.get("eos_token") or ENDOFTEXT
        eos = eos.get("content") if isinstance(eos, dict) else eos
        eot_id = tokenizer.token_to_id(str(eos))
        if eot_id is None:
            raise UserError(f"--tokenizer {self.folder}: its end-of-text token {eos!r} is not in its vocabulary")
        specials = {t.content: i for i, t in sorted(tokenizer.get_added_tokens_decoder().items()) if t.special}
        return BuiltTokenizer(tokenizer, eot_id, self.sha256 or "", specials)


def prepare_tokenizer(folder: str | None) -> TokenizerSource:
    """A tokenizer to train (None), or a checked existing folder holding tokenizer.json to reuse."""
    if folder is None:
        return TokenizerSource(None, None)
    path = Path(folder).expanduser().resolve()
    if not (path / TOKENIZER_FILE).is_file():
        raise UserError(f"--tokenizer {folder} has no {TOKENIZER_FILE}; pass a model or data dir that has one")
    try:
        Tokenizer.from_file(str(path / TOKENIZER_FILE))
    except Exception as e:  # the Rust side raises a bare Exception for malformed files
        raise UserError(f"--tokenizer {folder}: {TOKENIZER_FILE} does not load ({e})") from None
    return TokenizerSource(path, _sha256(path / TOKENIZER_FILE))
