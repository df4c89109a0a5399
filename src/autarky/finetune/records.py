"""Training records: JSONL files of `{"messages": [...]}` (with optional `"tools"`) or `{"prompt", "completion"}`.

Every record keeps where it came from (file and line) and the sha256 of its line, for the run's manifest and for
error messages that point at the line to fix. Nothing here knows about tokenizers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autarky.errors import UserError

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Record:
    source: Path
    line: int  # 1-based
    sha256: str  # of the line's bytes, without its newline
    messages: list[dict[str, Any]] | None  # a conversation, or None for prompt/completion
    prompt: str | None = None
    completion: str | None = None
    tools: list[Any] | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def conversation(self) -> list[dict[str, Any]]:
        """The record as chat messages (a prompt/completion pair is one user and one assistant turn)."""
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.completion}]


def data_files(path: Path) -> list[Path]:
    """The JSONL files of `path` (itself, or every *.jsonl below it, in name order)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        if not files:
            raise UserError(f"data folder {path} holds no .jsonl files")
        return files
    raise UserError(f"data {path} does not exist; give a .jsonl file or a folder of them")


def read_records(path: Path) -> list[Record]:
    """Every record of the file or folder, checked; UserError naming the file and line of the first bad one."""
    records = []
    for file in data_files(path):
        try:
            lines = file.read_bytes().split(b"\n")
        except OSError as exc:
            raise UserError(f"cannot read {file}: {exc}") from None
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                records.append(_parse(file, number, raw.rstrip(b"\r")))
    if not records:
        raise UserError(f"{path} holds no records")
    return records


def _parse(file: Path, line: int, raw: bytes) -> Record:
    where = f"{file}:{line}"
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: not valid JSON ({exc})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a record must be a JSON object with messages, or prompt and completion")
    if "messages" in obj:
        messages = obj["messages"]
        tools = obj.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise UserError(f"{where}: tools must be a list of tool definitions")
        _check_messages(messages, where)
        return Record(file, line, digest, messages, tools=tools)
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise UserError(f"{where}: a record needs messages, or prompt and completion strings")
    if not completion:
        raise UserError(f"{where}: the completion is empty; there is nothing to train on")
    return Record(file, line, digest, None, prompt, completion)


def _check_messages(messages: object, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise UserError(f"{where}: message {i} needs a role, one of {', '.join(ROLES)}")
        content, calls = message.get("content"), message.get("tool_calls")
        if calls is not None and (message["role"] != "assistant" or not isinstance(calls, list)):
            raise UserError(f"{where}: message {i}: tool_calls must be a list, on an assistant message")
        if not (isinstance(content, str) or (content is None and calls)):
            raise UserError(f"{where}: message {i} ({message['role']}) needs string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: the conversation has no assistant turn, so there is nothing to train on")
