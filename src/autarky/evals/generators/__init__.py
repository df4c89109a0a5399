"""Writers of the bundled suites. `python -m autarky.evals.generators [OUT_DIR]` regenerates them all
(default: the package's suites/ folder); the items are deterministic for a given Python version."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autarky.evals.generators import chat_qa, code_completion, python_functions, slides, spreadsheet, tool_use

SUITES: dict[str, tuple[str, Callable[[], list[dict[str, Any]]]]] = {
    "chat-qa": ('''name = "chat-qa"
task = "chat"
kind = "generate"
grader = "answer-match"
metric = "answer_match"
description = "Short factual and arithmetic questions; a correct answer counts in a sentence (answer_match), strict normalized exact match of the first line is the exact_match metric."
system = "Answer with only the final answer: a word, a name or a number. No explanation, no full sentence."
max_tokens = 24
''', chat_qa.items),
    "python-functions": ('''name = "python-functions"
task = "code"
kind = "generate"
grader = "python-tests"
metric = "pass_rate"
description = "Write a small Python function; graded by running unit tests in a sandboxed subprocess."
system = "You are a careful Python programmer. Reply with code only."
max_tokens = 384
''', python_functions.items),
    "spreadsheet": ('''name = "spreadsheet"
task = "spreadsheet"
kind = "generate"
grader = "formula"
metric = "value_match"
description = "Write a spreadsheet formula over a small sales sheet; graded by evaluating it with the formulas engine."
system = "You are a spreadsheet expert. Reply with a single formula only."
max_tokens = 96
''', spreadsheet.items),
    "slides": ('''name = "slides"
task = "slides"
kind = "generate"
grader = "slides-structure"
metric = "structure"
description = "Outline a deck as JSON, asked for with response_format json_schema (schema.json); graded by structure (valid JSON, slide count, title and bullet lengths, required terms); format_valid by the schema."
system = "You write presentation outlines. Reply with JSON only."
max_tokens = 768
needs = ["json_schema"]
''', slides.items),
    "tool-use": ('''name = "tool-use"
task = "tool-use"
kind = "generate"
grader = "tool-call"
metric = "exact_call"
description = "A company's own tools (invoices, tickets, currency, meetings, ...); each request is graded on the exact call: the right function, arguments valid for its schema and equal to the expected ones."
system = "You are Acme Corp's assistant. Carry out the user's request by calling one of the tools provided."
max_tokens = 256
needs = ["tools"]
''', tool_use.items),
    "code-completion": ('''name = "code-completion"
task = "code-completion"
kind = "loglikelihood"
grader = "code-completion"
metric = "next_line_exact"
description = "Held-out standard-library functions: bits per byte of the body given signature and docstring, and exact match of the next line."
max_tokens = 64
''', code_completion.items),
}


# Files a suite holds besides suite.toml and items.jsonl.
FILES: dict[str, dict[str, Callable[[], str]]] = {"slides": {"schema.json": slides.schema_json}}


def write_suites(root: Path, names: list[str] | None = None) -> list[Path]:
    written = []
    for name in names or list(SUITES):
        toml, make_items = SUITES[name]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "suite.toml").write_text(toml, encoding="utf-8")
        (folder / "items.jsonl").write_text(
            "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in make_items()), encoding="utf-8")
        for file, make_text in FILES.get(name, {}).items():
            (folder / file).write_text(make_text(), encoding="utf-8")
        written.append(folder)
    return written
