"""Text in and out of the engine: tokenizer and chat template (incremental detokenization and stop strings are
autarky.model.tokenizer.IncrementalText, shared with `autarky sample`).

Encoding and decoding go straight to the Rust `tokenizers` object (the hot path runs once per generated token);
`transformers` loads the tokenizer and its special tokens; the chat template renders through the model package's
renderer, the one `autarky sample` uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from autarky.errors import UserError
from autarky.model.tokenizer import ChatTemplate


class TextCodec:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: set[int] | None = None) -> None:
        self.hf = tokenizer
        self.fast = tokenizer.backend_tokenizer
        self.vocab_size = self.fast.get_vocab_size(with_added_tokens=True)
        eos = set(eos_token_ids or ())
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        self.eos_token_ids = eos
        self._token_text: dict[int, str] = {}
        template = tokenizer.chat_template
        if isinstance(template, dict):  # named templates: the default one is the chat template
            template = template.get("default")
        self.chat_template = ChatTemplate(template, tokenizer.bos_token or "", tokenizer.eos_token or "") \
            if template else None

    @classmethod
    def from_folder(cls, folder: Path) -> TextCodec:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:  # transformers raises many types for a missing/broken tokenizer
            raise UserError(f"cannot load a tokenizer from {folder}: {exc}; the folder needs tokenizer.json") from exc
        return cls(tokenizer, _generation_eos(folder))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.fast.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.fast.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text of one token (special tokens included), as logprobs report it."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.fast.decode([token_id], skip_special_tokens=False)
        return text

    @property
    def supports_tools(self) -> bool:
        return self.chat_template is not None and self.chat_template.supports_tools

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None) -> str:
        if self.chat_template is None:
            raise ValueError("this model's tokenizer has no chat template; use /v1/completions")
        return self.chat_template.render(messages, add_generation_prompt, tools)

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True,
                 tools: list[dict] | None = None) -> list[int]:
        # The template already writes the special tokens it wants (vLLM encodes chat prompts the same way).
        return self.encode(self.chat_prompt(messages, add_generation_prompt, tools), add_special_tokens=False)

    def info(self) -> dict:
        """vLLM's /tokenizer_info fields, which lm-eval's remote tokenizer reads."""
        hf = self.hf
        return {
            "tokenizer_class": type(hf).__name__,
            "eos_token": hf.eos_token,
            "bos_token": hf.bos_token,
            "pad_token": hf.pad_token,
            "unk_token": hf.unk_token,
            "eos_token_id": hf.eos_token_id,
            "bos_token_id": hf.bos_token_id,
            "chat_template": hf.chat_template,
            "model_max_length": None,
            "vocab_size": self.vocab_size,
        }


def _generation_eos(folder: Path) -> set[int]:
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return set()
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list) else {int(eos)}
