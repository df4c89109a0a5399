"""Records → token ids and the positions trained, with the base model's own tokenizer and chat template.

Assistant turns are found by rendering the conversation prefix by prefix (as TRL's assistant masks and
torchtune do without `{% generation %}` markers, which few templates ship): the text of turn i is what
`messages[:i+1]` adds to the prompt `messages[:i]` + the assistant header. The whole conversation is tokenized
once, as inference would see it, and a token is trained when it starts inside an assistant turn's text, so
every assistant turn of a multi-turn conversation is trained, its end-of-turn token included, and system,
user and tool turns never are. A template that cannot render a record (its tools, a turn it drops, prefixes
that do not extend each other) is a UserError naming the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2.exceptions import TemplateError

from autarky.errors import UserError
from autarky.finetune.records import Record
from autarky.model.hf import eos_token_ids, special_token_ids
from autarky.model.tokenizer import ChatTemplate, load_hf_folder_tokenizer


@dataclass(frozen=True)
class Example:
    tokens: list[int]
    trained: list[bool]  # per token: is it a target of the loss (it is predicted from the tokens before it)
    record: Record

    @property
    def positions(self) -> int:
        """Input positions the example takes in a row (its last token is only a target)."""
        return len(self.tokens) - 1


class Renderer:
    """The base model folder's tokenizer and chat template, applied to records."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.tokenizer = load_hf_folder_tokenizer(folder)
        self.template = ChatTemplate.from_folder(folder)
        self.end_ids = set(eos_token_ids(folder)) | set(special_token_ids(folder)[1])
        if not self.end_ids:
            raise UserError(f"{folder} names no end-of-sequence token; fine-tuning could never learn to stop")

    def encode(self, record: Record) -> Example:
        if self.template is None:
            return self._plain(record)
        messages = record.conversation()
        self._check_tools(record)
        full = self._render(record, messages, False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(record, messages[:i], True)
            through = self._render(record, messages[: i + 1], False)
            if not through.startswith(prompt) or not full.startswith(through):
                raise UserError(f"{record.where}: the chat template of {self.folder} does not render this "
                                "conversation prefix by prefix, so its assistant turns cannot be located")
            spans.append((len(prompt), len(through)))
        for message in messages:
            if isinstance(message.get("content"), str) and message["content"] not in full:
                raise UserError(f"{record.where}: the chat template of {self.folder} drops the "
                                f"{message['role']} turn; it cannot render this conversation")
        encoding = self.tokenizer.encode(full, add_special_tokens=False)
        trained = [any(a <= start < b for a, b in spans) for start, _ in encoding.offsets]
        tokens = list(encoding.ids)
        for a, b in spans:
            if not any(t in self.end_ids for t, s, on in zip(tokens, encoding.offsets, trained, strict=True)
                       if on and a <= s[0] < b):
                raise UserError(f"{record.where}: the chat template of {self.folder} ends an assistant turn "
                                "without an end-of-turn token; the model would never learn to stop")
        return Example(tokens, trained, record)

    def _plain(self, record: Record) -> Example:
        """No chat template: prompt + completion as plain text, then the end-of-sequence token, trained."""
        if record.messages is not None:
            raise UserError(f"{record.where}: {self.folder} has no chat template, so it cannot be fine-tuned on "
                            "chat messages; give prompt/completion records")
        prompt = self.tokenizer.encode(record.prompt or "", add_special_tokens=False).ids
        completion = self.tokenizer.encode(record.completion or "", add_special_tokens=False).ids
        eos = min(self.end_ids)
        tokens = [*prompt, *completion, eos]
        return Example(tokens, [False] * len(prompt) + [True] * (len(completion) + 1), record)

    def _check_tools(self, record: Record) -> None:
        assert self.template is not None
        calls = any(m.get("tool_calls") for m in record.conversation())
        if (record.tools and "tools" not in self.template.source) or (
                calls and "tool_calls" not in self.template.source):
            raise UserError(f"{record.where}: the chat template of {self.folder} cannot render tools or tool "
                            "calls; use a base whose template does, or write the calls as message content")

    def _render(self, record: Record, messages: list[dict], add_generation_prompt: bool) -> str:
        assert self.template is not None
        try:
            return self.template.render(messages, add_generation_prompt, tools=record.tools)
        except TemplateError as bad:
            raise UserError(f"{record.where}: the chat template of {self.folder} rejected the record: {bad}") \
                from None
