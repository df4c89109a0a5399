"""Records → tokens: assistant-only masks on multi-turn and tool conversations, end-of-turn trained, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autarky.errors import UserError
from autarky.finetune.records import read_records
from autarky.finetune.render import Renderer
from fixtures.finetune import chat, write_jsonl

TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}<call>{{ c['function'] | tojson }}</call>"
    "{% endfor %}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _trained_text(renderer: Renderer, path: Path) -> tuple[str, str]:
    ex = renderer.encode(read_records(path)[0])
    decode = renderer.tokenizer.decode
    return (decode(ex.tokens, skip_special_tokens=False),
            decode([t for t, on in zip(ex.tokens, ex.trained, strict=True) if on], skip_special_tokens=False))


def test_every_assistant_turn_and_its_end_token_are_trained_and_nothing_else(
        tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    full, trained = _trained_text(Renderer(tiny_hf_model_dir), write_jsonl(tmp_path / "d.jsonl", [chat(0)]))
    assert full.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>")
    assert trained == "red<|im_end|>\nRED<|im_end|>\n"  # both turns, each with its end-of-turn token


def test_prompt_completion_is_a_user_and_an_assistant_turn(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    full, trained = _trained_text(Renderer(tiny_hf_model_dir), path)
    assert full == "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    assert trained == "4<|im_end|>\n"


@pytest.fixture(scope="module")
def tool_model(tiny_hf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tools") / "model"
    shutil.copytree(tiny_hf_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = TOOL_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_tool_calls_are_trained_and_tool_results_are_not(tool_model: Path, tmp_path: Path) -> None:
    call = {"type": "function", "function": {"name": "sheet_sum", "arguments": {"range": "A1:A3"}}}
    record = {"tools": [{"type": "function", "function": {"name": "sheet_sum"}}], "messages": [
        {"role": "user", "content": "total?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]}  # fmt: skip
    full, trained = _trained_text(Renderer(tool_model), write_jsonl(tmp_path / "d.jsonl", [record]))
    assert "Tools: " in full and "<|im_start|>tool\n42<|im_end|>" in full
    assert trained == '<call>{"name": "sheet_sum", "arguments": {"range": "A1:A3"}}</call><|im_end|>\nIt is 42.<|im_end|>\n'


def test_a_template_that_cannot_render_tools_is_refused(tiny_hf_model_dir: Path, tmp_path: Path) -> None:
    record = {"tools": [{"name": "f"}], "messages": [{"role": "user", "content": "x"},
                                                     {"role": "assistant", "content": "y"}]}  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", [record])
    with pytest.raises(UserError, match=r"d\.jsonl:1: the chat template .* cannot render tools"):
        Renderer(tiny_hf_model_dir).encode(read_records(path)[0])


@pytest.mark.parametrize(("line", "message"), [
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": [{"role": "user", "content": "hi"}', "not valid JSON"),
    ('{"prompt": "a"}', "needs messages, or prompt and completion"),
    ('{"messages": [{"role": "wizard", "content": "hi"}]}', "needs a role"),
    ('[1, 2]', "must be a JSON object"),
])  # fmt: skip
def test_bad_records_name_their_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat(0), "", line])
    with pytest.raises(UserError, match=rf"d\.jsonl:3: .*{message}"):
        read_records(path)


def test_a_folder_is_read_file_by_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data" / "b.jsonl", [chat(1)])
    write_jsonl(tmp_path / "data" / "a" / "x.jsonl", [chat(0), chat(2)])
    records = read_records(tmp_path / "data")
    assert [(r.source.name, r.line) for r in records] == [("x.jsonl", 1), ("x.jsonl", 2), ("b.jsonl", 1)]
