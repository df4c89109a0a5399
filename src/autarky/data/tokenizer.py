"""The byte-level BPE tokenizer: trained with Hugging Face `tokenizers`, saved so `transformers` loads it as is.

Byte-level with no normaliser means every string round-trips exactly (decode with skip_special_tokens=False).
The three special tokens have fixed ids that the other stages rely on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# The special tokens (ids 0, 1, 2 in this order) and the chat template belong to the model's chat format.
from autarky.model.chat import CHAT_TEMPLATE as CHAT_TEMPLATE
from autarky.model.chat import ENDOFTEXT as ENDOFTEXT
from autarky.model.chat import IM_END as IM_END
from autarky.model.chat import IM_START as IM_START
from autarky.model.chat import SPECIAL_TOKENS as SPECIAL_TOKENS

EOT_ID = 0

MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte plus the specials
MAX_VOCAB_SIZE = 262_144

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
