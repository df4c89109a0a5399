"""The CLI end to end with Typer's runner: a full run → leaderboard → compare → routes → report → arena, and errors."""

from __future__ import annotations

import json
import tomllib

from typer.testing import CliRunner

from autarky.cli import app
from evals.stub_openai import Script

runner = CliRunner()


def test_cli_flow(stub_server, store_url, tmp_path):
    good = stub_server(Script(answer=lambda p: "Paris" if "France" in p else "7"))
    ours = stub_server(Script(answer=lambda p: "Paris" if "France" in p else "no"))
    result = runner.invoke(app, ["eval", "run", "--suite", "chat-qa", "--model", f"partner={good.base_url}",
                                 "--model", f"ours={ours.base_url}", "--limit", "6", "--in-house", "ours",
                                 "--price", "partner=0.15:0.6", "--store", store_url])
    assert result.exit_code == 0, result.output
    assert "12 items graded" in result.output

    result = runner.invoke(app, ["eval", "leaderboard", "--json", "--store", store_url])
    board = json.loads(result.output)
    assert {r["model"] for r in board} == {"partner", "ours"} and all(r["n"] == 6 for r in board)

    result = runner.invoke(app, ["eval", "compare", "partner", "ours", "--store", store_url])
    assert result.exit_code == 0 and "chat-qa: partner − ours" in result.output and "sign test" in result.output

    routes = tmp_path / "routes.toml"
    result = runner.invoke(app, ["eval", "routes", "--out", str(routes), "--prefer-in-house-within", "100",
                                 "--store", store_url])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(routes.read_text())["tasks"]["chat"]["candidates"][0]["model"] == "ours"
    # The evidence for the order: the paired p-value against the runner-up (equal scores here: ours is cheaper).
    first = tomllib.loads(routes.read_text())["tasks"]["chat"]["candidates"][0]
    assert first["p_vs_next"] == 1.0 and "in_house_margin" not in first

    result = runner.invoke(app, ["eval", "report", "--out", str(tmp_path / "report"), "--store", store_url])
    assert result.exit_code == 0 and (tmp_path / "report" / "index.html").is_file()

    result = runner.invoke(app, ["arena", "--from-results", "--json", "--store", store_url,
                                 "--save-battles", str(tmp_path / "b.jsonl")])
    assert result.exit_code == 0, result.output
    assert {r["model"] for r in json.loads(result.output)} == {"partner", "ours"}
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 6  # one battle per shared item


def test_arena_battles_file(tmp_path):
    path = tmp_path / "battles.jsonl"
    rows = [{"model_a": "A", "model_b": "B", "winner": w} for w in ["model_a"] * 3 + ["model_b", "tie", "both_bad"]]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    result = runner.invoke(app, ["arena", "--battles", str(path), "--json"])
    assert result.exit_code == 0, result.output
    ratings = {r["model"]: r["rating"] for r in json.loads(result.output)}
    assert abs(ratings["A"] - 1060.206) < 1e-3 and abs(ratings["B"] - 939.794) < 1e-3
    result = runner.invoke(app, ["arena", "--battles", str(path)])
    assert result.exit_code == 0 and "Rank (UB)" in result.output


def test_cli_errors_are_one_line(tmp_path, store_url):
    cases = [
        (["eval", "run", "--model", "m=http://127.0.0.1:9/v1", "--suite", "chat-qa", "--store", store_url], "unreachable"),
        (["eval", "run", "--model", "no-url", "--store", store_url], "write NAME=URL"),
        (["eval", "run", "--model", "m=http://127.0.0.1:9/v1", "--suite", "nope", "--store", store_url], "no suite 'nope'"),
        (["eval", "run", "--model", "m=http://127.0.0.1:9/v1", "--price", "x=1:2", "--store", store_url], "not a --model"),
        (["eval", "run", "--model", "m=http://127.0.0.1:9/v1", "--api-key-env", "AUTARKY_TEST_UNSET_VAR"], "is not set"),
        (["eval", "routes", "--out", str(tmp_path / "r.toml"), "--store", store_url], "no eval results"),
        (["arena", "--battles", str(tmp_path / "missing.jsonl")], "no battles file"),
        (["arena"], "no battles"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Error:" in result.output and message in result.output, (args, result.output)


def test_piped_tables_carry_full_model_names(stub_server, store_url):
    name = "partner-model-with-a-name-longer-than-any-terminal-column-2026-11-01-preview"
    good = stub_server(Script(answer=lambda p: "Paris"))
    result = runner.invoke(app, ["eval", "run", "--suite", "chat-qa", "--model", f"{name}={good.base_url}",
                                 "--limit", "2", "--store", store_url])
    assert result.exit_code == 0, result.output
    assert name in result.output  # the leaderboard printed after the run
    result = runner.invoke(app, ["eval", "leaderboard", "--store", store_url])  # stdout is not a terminal here
    assert result.exit_code == 0 and name in result.stdout and "…" not in result.stdout, result.stdout


def test_new_spelling_of_arena(tmp_path):
    path = tmp_path / "battles.jsonl"
    path.write_text("\n".join(json.dumps({"model_a": "A", "model_b": "B", "winner": "model_a"}) for _ in range(3)))
    new = runner.invoke(app, ["eval", "arena", "--battles", str(path), "--json"])
    old = runner.invoke(app, ["arena", "--battles", str(path), "--json"])
    assert new.exit_code == 0 and json.loads(new.stdout) == json.loads(old.stdout)


def test_compare_json_gives_the_paired_test_per_suite(stub_server, store_url):
    good = stub_server(Script(answer=lambda p: "The capital of France is Paris." if "France" in p else "Tokyo"))
    bad = stub_server(Script(answer=lambda p: "no idea"))
    result = runner.invoke(app, ["eval", "run", "--suite", "chat-qa", "--model", f"good={good.base_url}",
                                 "--model", f"bad={bad.base_url}", "--limit", "3", "--store", store_url])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "compare", "good", "bad", "--json", "--store", store_url])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    # France (in a sentence) and Japan are right, Italy is wrong: 2 discordant items, McNemar exact p = 0.5.
    assert row["suite"] == "chat-qa" and row["n"] == 3 and (row["wins"], row["losses"]) == (2, 0)
    assert row["test"] == "mcnemar-exact" and row["p_value"] == 0.5 and row["significant"] is False
    assert row["mean_diff"] == 2 / 3 and row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
    result = runner.invoke(app, ["eval", "compare", "good", "bad", "--store", store_url])
    assert "McNemar exact binomial" in result.stdout and "p=0.5, not significant at 5%" in result.stdout


def test_the_cli_default_alpha_is_the_stats_one():
    from autarky.evals import commands, stats

    assert commands.ALPHA == stats.ALPHA
