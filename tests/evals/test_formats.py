"""Format validity on its own: schema-valid JSON, the tool-call envelope, normalization, tool-use item checks."""

from __future__ import annotations

import json

from autarky.evals import formats
from autarky.evals.formats import ToolCall
from autarky.evals.generators.slides import DECK_SCHEMA
from autarky.evals.generators.tool_use import TOOLS


def test_json_problem_takes_the_whole_reply_and_the_schema():
    deck = {"slides": [{"title": "Why solar", "bullets": ["Lower bills", "Clean power"]}]}
    assert formats.json_problem(json.dumps(deck), DECK_SCHEMA) is None
    assert "not JSON" in formats.json_problem(f"```json\n{json.dumps(deck)}\n```", DECK_SCHEMA)
    assert "bullets" in formats.json_problem(json.dumps({"slides": [{"title": "t", "bullets": ["one"]}]}), DECK_SCHEMA)
    assert formats.json_problem(json.dumps({**deck, "theme": "dark"}), DECK_SCHEMA) is not None


def test_envelope_round_trips_and_plain_text_has_no_calls():
    calls = [ToolCall("lookup_invoice", '{"invoice_id": "INV-1"}')]
    assert formats.decode_calls(formats.encode_calls("checking", calls)) == ("checking", calls)
    assert formats.decode_calls("just text") == ("just text", [])
    assert formats.decode_calls('{"tool_calls": "no"}') == ('{"tool_calls": "no"}', [])


def test_normalize_follows_the_schema():
    enum = {"type": "string", "enum": ["EUR"]}
    assert formats.normalize(" EUR ", enum) == formats.normalize("eur", enum)
    assert formats.normalize(" Paris ", {"type": "string"}) == "Paris"
    assert formats.normalize("paris", {"type": "string"}) != "Paris"
    assert formats.normalize(3, {}) == formats.normalize(3.0, {})
    when = {"type": "string", "format": "date-time"}
    assert formats.normalize("2027-01-02T10:00:00Z", when) == formats.normalize("2027-01-02T10:00:00", when)
    assert formats.normalize(["b", "a"], {"items": {}}, unordered=True) == ["a", "b"]


def test_tool_item_problems_are_named():
    good = {"tools": [TOOLS["lookup_invoice"]], "expected": {"name": "lookup_invoice", "arguments": {"invoice_id": "I"}}}
    assert formats.tool_item_problem(good) is None
    assert "not among" in formats.tool_item_problem({**good, "expected": {"name": "x", "arguments": {}}})
    assert "break" in formats.tool_item_problem({**good, "expected": {"name": "lookup_invoice", "arguments": {}}})
    assert "unique" in formats.tool_item_problem({**good, "tools": [TOOLS["lookup_invoice"]] * 2})
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {"type": "thing"}}}
    assert "not a valid JSON Schema" in formats.tool_item_problem({**good, "tools": [bad_schema]})
    assert "non-empty" in formats.tool_item_problem({**good, "tools": []})
