"""The data stage: a streaming, parallel build of token shards from a mixture of sources, and their manifest.

`build_dataset(DataConfig(...))` writes a data dir (`DataConfig.from_toml` reads a data config with
`SourceConfig`s); `forget_document` removes one document from it; `verify_data_dir`, `open_tokens`, `read_manifest`,
`load_tokenizer` and `vocab_size_of` read one back; `is_validation_document` is the per-document split rule.
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "DataConfig": "config",
    "SourceConfig": "config",
    "build_dataset": "build",
    "forget_document": "forget",
    "load_tokenizer": "manifest",
    "open_tokens": "manifest",
    "read_manifest": "manifest",
    "verify_data_dir": "manifest",
    "vocab_size_of": "manifest",
    "is_validation_document": "sources",
    "CHAT_TEMPLATE": "tokenizer",
    "ENDOFTEXT": "tokenizer",
    "EOT_ID": "tokenizer",
    "IM_END": "tokenizer",
    "IM_START": "tokenizer",
    "SPECIAL_TOKENS": "tokenizer",
})
