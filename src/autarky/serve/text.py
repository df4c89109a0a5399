"""Text in and out of the engine: tokenizer, chat template, incremental detokenization and stop strings.

Encoding and decoding go straight to the Rust `tokenizers` object (the hot path runs once per generated token);
`transformers` is used for what it does best here, rendering the model's chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from autarky.errors import UserError


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

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.hf.chat_template:
            raise ValueError("this model's tokenizer has no chat template; use /v1/completions")
        return self.hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        # The template already writes the special tokens it wants (vLLM encodes chat prompts the same way).
        return self.encode(self.chat_prompt(messages, add_generation_prompt), add_special_tokens=False)

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


class IncrementalText:
    """The text of one growing sequence, released in deltas that never split a character or a stop string."""

    def __init__(self, codec: TextCodec, stop: tuple[str, ...]) -> None:
        self.codec = codec
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # everything released so far
        self._hold = max((len(s) for s in stop), default=1) - 1

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (newly released text, whether a stop string was hit)."""
        self.ids.append(token_id)
        full = self.codec.decode(self.ids)
        if self.stop:
            start = max(0, len(self.text) - self._hold)
            hits = [i for i in (full.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                return self._release(full[: min(hits)]), True
        end = len(full)
        while end > len(self.text) and full[end - 1] == "\ufffd":  # an unfinished multi-byte character
            end -= 1
        for k in range(min(self._hold, end - len(self.text)), 0, -1):
            tail = full[end - k : end]
            if any(s.startswith(tail) for s in self.stop):
                end -= k
                break
        return self._release(full[:end]), False

    def finish(self) -> str:
        """Release whatever was held back (the sequence ended for another reason than a stop string)."""
        return self._release(self.codec.decode(self.ids))

    def _release(self, upto: str) -> str:
        delta = upto[len(self.text) :] if upto.startswith(self.text) else ""
        if len(upto) > len(self.text):
            self.text = upto if upto.startswith(self.text) else self.text
        return delta
