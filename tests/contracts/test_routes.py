"""The routing-table contract: what the eval stage writes, the gateway reads back equal; anything else is an error
naming the file and field."""

from __future__ import annotations

import math
import tomllib
from datetime import UTC, datetime

import pytest

from autarky.contracts.routes import (
    Candidate,
    RoutingTable,
    TaskRoute,
    dumps_toml,
    load_routing_table,
    parse_routing_table,
    write_routing_table,
)
from autarky.errors import UserError

TABLE = RoutingTable.of([
    TaskRoute(task="spreadsheet", pareto=["ours", "partner"], notes=["in-house ours preferred: 2.0 points below"],
              candidates=[
                  Candidate(model="ours", provider="", score=0.77, ci_low=0.7, ci_high=0.84, usd_per_1k_tokens=0.0,
                            p50_latency_ms=120.5, in_house=True, p_vs_next=0.031, in_house_margin=2.0),
                  Candidate(model="partner", provider="openai", score=0.79, ci_low=0.72, ci_high=0.86,
                            usd_per_1k_tokens=0.0015, p50_latency_ms=800.0, in_house=False),
              ]),
    TaskRoute(task='deck "writing"\tß', pareto=[], candidates=[Candidate(model="m")]),
], datetime(2026, 11, 23, 5, 0, tzinfo=UTC))

# Exactly what the writer before the contract produced (notes as comments, no evidence fields).
TODAYS_FILE = """# written by `autarky eval routes`; read by the gateway
generated_at = "2026-11-23T05:00:00Z"

# in-house ours preferred: 2.0 points below the best, within 5
[tasks.spreadsheet]
pareto = ["ours"]

[[tasks.spreadsheet.candidates]]
model = "ours"
provider = ""
score = 0.77
ci_low = 0.7
ci_high = 0.84
usd_per_1k_tokens = 0.0
p50_latency_ms = nan
in_house = true

[[tasks."deck writing".candidates]]
model = "m"
provider = "local"
score = 0.5
ci_low = 0.4
ci_high = 0.6
usd_per_1k_tokens = 0.001
p50_latency_ms = 10.0
in_house = false
"""


def test_write_then_read_is_equal(tmp_path):
    path = write_routing_table(TABLE, tmp_path / "routes.toml")
    assert load_routing_table(path) == TABLE
    assert load_routing_table(path).tasks['deck "writing"\tß'].task == 'deck "writing"\tß'
    assert not (tmp_path / "routes.toml.tmp").exists()


def test_the_writer_is_plain_toml():
    data = tomllib.loads(TABLE.to_toml())
    first = data["tasks"]["spreadsheet"]["candidates"][0]
    assert first["p_vs_next"] == 0.031 and first["in_house_margin"] == 2.0
    assert "p_vs_next" not in data["tasks"]["spreadsheet"]["candidates"][1]  # None is left out, not written
    assert "notes" not in data["tasks"]['deck "writing"\tß']  # so are empty notes
    text = dumps_toml({"a": math.nan, "b": -math.inf, "c": "\x7f\n", "t": {"u": {}}, "x": [{"y": [1, 2]}]})
    back = tomllib.loads(text)
    assert math.isnan(back["a"]) and back["b"] == -math.inf and back["c"] == "\x7f\n"
    assert back["t"] == {"u": {}} and back["x"] == [{"y": [1, 2]}]


def test_todays_files_still_load():
    table = parse_routing_table(TODAYS_FILE, "routes.toml")
    assert list(table.tasks) == ["spreadsheet", "deck writing"]
    ours = table.tasks["spreadsheet"].candidates[0]
    assert ours.in_house and ours.provider == "" and math.isnan(ours.p50_latency_ms) and ours.p_vs_next is None


@pytest.mark.parametrize("edit,field", [
    (("score = 0.77", "scroe = 0.77"), "tasks.spreadsheet.candidates.0.scroe: unknown field"),  # a renamed field
    (("in_house = true", "in_house = true\nweight = 2"), "tasks.spreadsheet.candidates.0.weight: unknown field"),
    (('pareto = ["ours"]', 'pareto = ["ours"]\nrank = 1'), "tasks.spreadsheet.rank: unknown field"),
    (("generated_at", "created_at"), "field created_at: unknown field"),
    (('model = "ours"', 'name = "ours"'), "tasks.spreadsheet.candidates.0."),
    (('pareto = ["ours"]', 'pareto = ["ours"]\ntask = "x"'), "unknown field 'task'"),
])
def test_unknown_or_renamed_fields_are_errors_naming_the_file_and_field(edit, field):
    old, new = edit
    with pytest.raises(UserError, match="routing table routes.toml") as info:
        parse_routing_table(TODAYS_FILE.replace(old, new, 1), "routes.toml")
    assert field in info.value.message and "\n" not in info.value.message


def test_reason_round_trips_and_the_evidence_line_shows_every_field(tmp_path):
    ours = Candidate(model="ours", score=0.77, ci_low=0.7, ci_high=0.84, p_vs_next=0.031, in_house_margin=2.0,
                     reason="in-house margin: 2.0 points below the best")
    table = RoutingTable.of([TaskRoute(task="t", candidates=[ours, Candidate(model="partner", score=0.79)])])
    back = load_routing_table(write_routing_table(table, tmp_path / "r.toml"))
    assert back.tasks["t"].candidates[0] == ours
    assert ours.evidence() == ("score=0.77 ci=0.7..0.84 p_vs_next=0.031 in_house_margin=2 "
                               "(in-house margin: 2.0 points below the best)")
    assert Candidate(model="m", score=0.5).evidence() == ""  # a hand-written table without evidence says nothing
    with pytest.raises(UserError, match="field tasks.t.candidates.0.reasons: unknown field"):
        parse_routing_table('[[tasks.t.candidates]]\nmodel = "m"\nreasons = "typo"\n', "r.toml")
