"""The data stage: corpus sources, a byte-level BPE tokenizer, token shards and their manifest.

Other stages use: `DataConfig`, `build_dataset`, `verify_data_dir`, `open_tokens`, `load_tokenizer`,
`vocab_size_of`, and `is_validation_document` (the per-document split rule).
"""

from autarky.data.build import DataConfig, build_dataset
from autarky.data.manifest import load_tokenizer, open_tokens, read_manifest, verify_data_dir, vocab_size_of
from autarky.data.sources import is_validation_document
from autarky.data.tokenizer import CHAT_TEMPLATE, ENDOFTEXT, EOT_ID, IM_END, IM_START, SPECIAL_TOKENS

__all__ = [
    "CHAT_TEMPLATE",
    "ENDOFTEXT",
    "EOT_ID",
    "IM_END",
    "IM_START",
    "SPECIAL_TOKENS",
    "DataConfig",
    "build_dataset",
    "is_validation_document",
    "load_tokenizer",
    "open_tokens",
    "read_manifest",
    "verify_data_dir",
    "vocab_size_of",
]
