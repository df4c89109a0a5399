"""Bundled suites load and meet the issue's sizes; malformed suites fail with the file and line named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autarky.data import is_validation_document
from autarky.errors import UserError
from autarky.evals.generators import FILES, write_suites
from autarky.evals.generators.code_completion import DEFAULT_VAL_FRACTION, check_held_out
from autarky.evals.suite import bundled_suite_names, load_suite

MINIMUM = {"python-functions": 50, "spreadsheet": 50, "slides": 30, "chat-qa": 100, "code-completion": 20}


def test_bundled_suites_meet_sizes():
    assert set(MINIMUM) <= set(bundled_suite_names())
    for name, minimum in MINIMUM.items():
        suite = load_suite(name)
        assert len(suite.items) >= minimum, name
        assert suite.config.task


def test_bundled_items_are_what_the_generators_write(tmp_path):
    # The shipped JSONL is regenerated from code (code-completion depends on the local stdlib, so not here).
    names = ["chat-qa", "python-functions", "spreadsheet", "slides", "tool-use"]
    write_suites(tmp_path, names)
    for name in names:
        assert load_suite(tmp_path / name).items == load_suite(name).items, name


def test_code_completion_items_come_from_held_out_documents(tiny_data_dir, tmp_path):
    items = load_suite("code-completion").items
    assert all(is_validation_document(it["relpath"], DEFAULT_VAL_FRACTION) for it in items)
    # A real data dir (built by the data stage) holds these files out of training: the check passes and sees them.
    assert check_held_out(items, tiny_data_dir) > 0
    leaked = tmp_path / "data"
    shutil.copytree(tiny_data_dir, leaked)
    manifest = json.loads((leaked / "manifest.json").read_text())
    shared = {it["relpath"] for it in items}
    for doc in manifest["documents"]:
        if doc["relpath"] in shared:
            doc["split"] = "train"
    (leaked / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="training split"):
        check_held_out(items, leaked)


def make_suite(root: Path, toml: str, lines: list[str]) -> Path:
    root.mkdir(exist_ok=True)
    (root / "suite.toml").write_text(toml)
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    return root


GOOD_TOML = 'name = "s"\ntask = "chat"\nkind = "generate"\ngrader = "exact-match"\n'


@pytest.mark.parametrize(
    ("toml", "lines", "message"),
    [
        (GOOD_TOML.replace("exact-match", "vibes"), ['{"id": 1, "prompt": "q", "answers": ["a"]}'], "unknown grader 'vibes'"),
        (GOOD_TOML, ['{"id": 1, "prompt": "q", "answers": ["a"]}', "{oops"], r"items.jsonl:2: not valid JSON"),
        (GOOD_TOML, ['{"id": 1, "prompt": "q"}'], r"items.jsonl:1: item lacks answers"),
        (GOOD_TOML, ['{"id": 1, "prompt": "q", "answers": []}'] * 2, "duplicate item id '1'"),
        (GOOD_TOML, [], "no items"),
        (GOOD_TOML.replace('kind = "generate"', 'kind = "essay"'), ['{"id": 1}'], "kind"),
        (GOOD_TOML.replace('kind = "generate"', 'kind = "loglikelihood"'), ['{"id": 1}'], "grades generate suites"),
        ("name = \n", [], "not valid TOML"),
        (GOOD_TOML + 'colour = "red"\n', ['{"id": 1}'], "colour"),
    ],
)
def test_malformed_suites_are_clear_errors(tmp_path, toml, lines, message):
    folder = make_suite(tmp_path / "bad", toml, lines)
    with pytest.raises(UserError, match=message):
        load_suite(folder)


def test_missing_suite_lists_the_bundled_ones():
    with pytest.raises(UserError, match="chat-qa"):
        load_suite("no-such-suite")


# Large enough to tell two models apart (issue 12); code-completion is bounded by the held-out stdlib files.
DECIDING = {"chat-qa": 200, "python-functions": 200, "spreadsheet": 200, "slides": 200, "code-completion": 100,
            "tool-use": 200}
# The demo runs the first items of each suite (`autarky demo --eval-limit`, 4 by default): items are appended,
# never reordered, so that subset stays what it was.
DEMO_SUBSET = {"chat-qa": ["fact-000", "fact-001", "fact-002", "fact-003"],
               "python-functions": ["add", "is_even", "factorial", "fibonacci"],
               "spreadsheet": ["sum-units", "avg-units", "max-units", "min-units"],
               "slides": ["deck-00", "deck-01", "deck-02", "deck-03"],
               "tool-use": ["lookup_invoice-00", "create_ticket-00", "convert_currency-00", "schedule_meeting-00"]}


def test_product_suites_are_large_enough_to_decide_and_keep_the_demo_subset_first():
    for name, minimum in DECIDING.items():
        items = load_suite(name).items
        assert len(items) >= minimum, (name, len(items))
    for name, ids in DEMO_SUBSET.items():
        assert [it["id"] for it in load_suite(name).items[: len(ids)]] == ids, name


def test_generation_is_reproducible_byte_for_byte(tmp_path):
    import sys

    from autarky.evals.suite import bundled_root

    names = ["chat-qa", "python-functions", "spreadsheet", "slides", "tool-use"]
    # code-completion reads the local standard library: compare it only on the Python that wrote it.
    if load_suite("code-completion").items[0]["python"] == f"{sys.version_info.major}.{sys.version_info.minor}":
        names.append("code-completion")
    write_suites(tmp_path / "a", names)
    write_suites(tmp_path / "b", names)
    for name in names:
        for file in ("suite.toml", "items.jsonl", *FILES.get(name, {})):
            first = (tmp_path / "a" / name / file).read_bytes()
            assert first == (tmp_path / "b" / name / file).read_bytes(), (name, file)
            assert first == (bundled_root() / name / file).read_bytes(), f"{name}/{file}: rerun python -m autarky.evals.generators"


TOOL_TOML = 'name = "t"\ntask = "tool-use"\nkind = "generate"\ngrader = "tool-call"\nneeds = ["tools"]\n'


def _tool_line(**changes) -> str:
    from autarky.evals.generators.tool_use import TOOLS

    item = {"id": 1, "prompt": "find invoice I", "tools": [TOOLS["lookup_invoice"]],
            "expected": {"name": "lookup_invoice", "arguments": {"invoice_id": "I"}}, **changes}
    return json.dumps(item)


@pytest.mark.parametrize(
    ("toml", "lines", "message"),
    [
        (TOOL_TOML.replace('needs = ["tools"]\n', ""), [_tool_line()], r'add needs = \["tools"\]'),
        (TOOL_TOML.replace('"tools"]', '"telepathy"]'), [_tool_line()], "needs"),
        (TOOL_TOML, [_tool_line(expected={"name": "refund_order", "arguments": {}})], "item '1': expected names"),
        (TOOL_TOML, [_tool_line(expected={"name": "lookup_invoice", "arguments": {"invoice": 3}})], "break"),
        (TOOL_TOML, [_tool_line(tools=[])], "non-empty list"),
        (GOOD_TOML + 'needs = ["json_schema"]\n', ['{"id": 1, "prompt": "q", "answers": ["a"]}'], "no schema.json"),
    ],
)
def test_malformed_format_suites_are_clear_errors(tmp_path, toml, lines, message):
    with pytest.raises(UserError, match=message):
        load_suite(make_suite(tmp_path / "bad", toml, lines))


def test_json_schema_suites_read_and_check_schema_json(tmp_path):
    folder = make_suite(tmp_path / "s", GOOD_TOML + 'needs = ["json_schema"]\n', ['{"id": 1, "prompt": "q", "answers": []}'])
    (folder / "schema.json").write_text('{"type": "object", "properties": {"a": {"type": "integer"}}}')
    fmt = load_suite(folder).response_format()
    assert fmt == {"type": "json_schema", "json_schema": {
        "name": "s", "strict": True, "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
    (folder / "schema.json").write_text('{"type": 5}')
    with pytest.raises(UserError, match="schema.json: not a valid JSON Schema"):
        load_suite(folder)
    (folder / "schema.json").write_text("{")
    with pytest.raises(UserError, match="schema.json: not valid JSON"):
        load_suite(folder)


def test_format_suites_declare_their_needs_and_tool_use_is_large_enough():
    from autarky.evals.generators.slides import DECK_SCHEMA

    tool_use, slides = load_suite("tool-use"), load_suite("slides")
    assert tool_use.config.needs == ["tools"] and len(tool_use.items) >= 200
    assert len({it["expected"]["name"] for it in tool_use.items}) >= 8  # every function of the product
    assert slides.config.needs == ["json_schema"] and slides.response_schema == DECK_SCHEMA
    assert all(not load_suite(n).config.needs for n in ("chat-qa", "python-functions", "spreadsheet"))
