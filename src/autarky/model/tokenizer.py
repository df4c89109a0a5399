"""Text around the model without importing transformers: an HF folder's tokenizer, its chat template rendered the
way transformers renders it, and incremental detokenization (used by `autarky sample` and by the serving engine).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import tokenizers
from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from autarky.errors import UserError
from autarky.model.hf import chat_template, special_token_ids


def load_hf_folder_tokenizer(folder: Path) -> tokenizers.Tokenizer:
    """The `tokenizers.Tokenizer` of an HF model folder (its tokenizer.json)."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{folder} has no tokenizer.json")
    return tokenizers.Tokenizer.from_file(str(path))


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


@functools.cache
def _compile(source: str) -> Template:
    # transformers' environment: sandboxed, trim_blocks and lstrip_blocks, loop controls, and its helpers.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


@dataclass(frozen=True)
class ChatTemplate:
    """A model's Jinja chat template with the special-token strings it may refer to."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None
               ) -> str:  # fmt: skip
        """The prompt text for `messages` ([{"role", "content"}], plus `tool_calls` / `tool_call_id` where the
        template knows them) and `tools` (OpenAI function specs, as transformers' `apply_chat_template(tools=)`);
        jinja2's TemplateError when the template rejects them (its `raise_exception`)."""
        return _compile(self.source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            tools=tools, bos_token=self.bos_token, eos_token=self.eos_token)

    @property
    def supports_tools(self) -> bool:
        """Whether the template renders a tool list (else callers use their fallback format)."""
        return "tools" in self.source

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTemplate | None:
        """The HF folder's template (None if it has none), with bos/eos as the folder's config names them."""
        source = chat_template(folder)
        if source is None:
            return None
        tokenizer = load_hf_folder_tokenizer(folder)
        bos, eos = special_token_ids(folder)
        return cls(source, tokenizer.id_to_token(bos) if bos is not None else "",
                   tokenizer.id_to_token(eos[0]) if eos else "")


def render_chat(folder: Path, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """`messages` through the HF folder's chat template, with a UserError when it has none or rejects them."""
    template = ChatTemplate.from_folder(folder)
    if template is None:
        raise UserError(f"{folder} has no chat template; give a plain prompt instead")
    try:
        return template.render(messages, add_generation_prompt)
    except TemplateError as bad:
        raise UserError(f"chat template of {folder} rejected the messages: {bad}") from None


class IncrementalText:
    """The text of one growing sequence, released in deltas that never split a character or a stop string.

    `decode` turns the sequence's token ids into text (e.g. a tokenizer's decode, with or without special tokens).
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()) -> None:
        self.decode = decode
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # everything released so far
        self._hold = max((len(s) for s in stop), default=1) - 1

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token; return (newly released text, whether a stop string was hit)."""
        self.ids.append(token_id)
        full = self.decode(self.ids)
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
        return self._release(self.decode(self.ids))

    def _release(self, upto: str) -> str:
        delta = upto[len(self.text) :] if upto.startswith(self.text) else ""
        if len(upto) > len(self.text):
            self.text = upto if upto.startswith(self.text) else self.text
        return delta
