"""The tokenizer of an HF folder without importing transformers: tokenizer.json, the chat template, streaming decode."""

from __future__ import annotations

from pathlib import Path

import tokenizers
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from autarky.errors import UserError
from autarky.model.hf import chat_template, special_token_ids


def load_tokenizer(folder: Path) -> tokenizers.Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{folder} has no tokenizer.json")
    return tokenizers.Tokenizer.from_file(str(path))


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def render_chat(folder: Path, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages` ([{"role", "content"}]) through the folder's chat template, rendered the way
    transformers renders it (sandboxed Jinja, trim_blocks and lstrip_blocks)."""
    template = chat_template(folder)
    if template is None:
        raise UserError(f"{folder} has no chat template; give a plain prompt instead")
    tokenizer = load_tokenizer(folder)
    bos, eos = special_token_ids(folder)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=tokenizer.id_to_token(bos) if bos is not None else "",
            eos_token=tokenizer.id_to_token(eos[0]) if eos else "",
        )
    except TemplateError as bad:
        raise UserError(f"chat template of {folder} rejected the messages: {bad}") from None


class StreamDecoder:
    """Turns a growing list of token ids into text increments, holding back incomplete UTF-8 sequences."""

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already returned

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return ""  # the rest of a multi-byte character is still to come
        new, self.emitted = text[self.emitted:], len(text)
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        new, self.emitted = text[self.emitted:], len(text)
        return new
