"""The code-completion suite: functions from standard-library files that the data stage holds out of training.

A document is held out when `autarky.data.is_validation_document(relpath, val_fraction)` says so (a hash of its
path relative to the stdlib root), so the items stay held out whatever subset or machine the data was built on.
Each item gives the model a function's signature and docstring and scores
- bits per byte of the reference body given that prompt (from echoed logprobs), and
- exact match of the body's first line, generated greedily.
The relpath of the source file is recorded in every item; `check_held_out` verifies it against a data manifest.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path
from typing import Any

from autarky.errors import UserError

DEFAULT_VAL_FRACTION = 0.05  # autarky.data.DataConfig's default
# The first PER_FILE functions of each held-out file in path order come first (the first release's items, and the
# demo's subset), then the rest of each file's, up to MAX_ITEMS: the held-out files hold about 120 at the default
# val_fraction.
MAX_ITEMS, PER_FILE = 200, 4
# Short functions: the item must fit a small in-house model's context (256 tokens for the demo's nano model)
# without truncating the body being scored.
BODY_LINES = (3, 12)
MAX_ITEM_CHARS = 900


def _candidates(relpath: str, text: str) -> list[dict[str, Any]]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = text.splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        doc = node.body[0]
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            continue
        if len(node.body) < 2 or node.end_lineno is None:
            continue
        head = lines[node.lineno - 1: doc.end_lineno]
        body = lines[doc.end_lineno: node.end_lineno]
        if not BODY_LINES[0] <= len(body) <= BODY_LINES[1] or any("\t" in ln for ln in head + body):
            continue
        if sum(len(ln) + 1 for ln in head + body) > MAX_ITEM_CHARS:
            continue
        source = textwrap.dedent("\n".join(head + body) + "\n")
        dedented = source.splitlines(keepends=True)
        prompt, rest = "".join(dedented[: len(head)]), "".join(dedented[len(head):])
        next_line = next((ln.strip() for ln in rest.splitlines() if ln.strip()), "")
        if not next_line or next_line.startswith("#"):
            continue
        found.append({"id": f"{relpath}::{node.name}:{node.lineno}", "prompt": prompt, "body": rest,
                      "next_line": next_line, "relpath": relpath, "lineno": node.lineno})
    return sorted(found, key=lambda c: c["lineno"])


def items(val_fraction: float = DEFAULT_VAL_FRACTION) -> list[dict[str, Any]]:
    from autarky.data import is_validation_document
    from autarky.data.sources import STDLIB, load_corpus

    corpus = load_corpus(STDLIB)
    held_out = [_candidates(doc.relpath, doc.text) for doc in sorted(corpus.documents, key=lambda d: d.relpath)
                if is_validation_document(doc.relpath, val_fraction) and "/test" not in f"/{doc.relpath}"]
    out: list[dict[str, Any]] = [c for found in held_out for c in found[:PER_FILE]]
    out += [c for found in held_out for c in found[PER_FILE:]]
    for cand in out:
        cand["python"] = f"{sys.version_info.major}.{sys.version_info.minor}"
    return out[:MAX_ITEMS]


def check_held_out(suite_items: list[dict[str, Any]], data_dir: str | Path) -> int:
    """Raise if any item's source document is in the training split of the dataset at `data_dir`."""
    from autarky.data import read_manifest

    manifest = read_manifest(data_dir)
    split = {d["relpath"]: d["split"] for d in manifest.get("documents", [])}
    leaked = sorted({it["relpath"] for it in suite_items if split.get(it.get("relpath")) == "train"})
    if leaked:
        raise UserError(
            f"{len(leaked)} code-completion source file(s) are in the training split of {data_dir} "
            f"(e.g. {leaked[0]}); rebuild the data with the default --val-fraction or regenerate the suite"
        )
    return sum(1 for it in suite_items if it.get("relpath") in split)
