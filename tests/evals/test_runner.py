"""The runner against a real HTTP server on 127.0.0.1: resume, retries, failures, costs, likelihood scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from autarky.errors import UserError
from autarky.evals.api import evaluate
from autarky.evals.results import leaderboard, load_results
from autarky.evals.suite import load_suite
from autarky.store.database import open_store
from evals.stub_openai import Script


def qa_answers(prompt: str) -> str:
    """Right on the capitals, wrong on everything else."""
    facts = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome"}
    return next((city for country, city in facts.items() if country in prompt), "42")


def test_resume_skips_finished_items(stub_server, store_url):
    script = Script(answer=qa_answers, fail_after=4)
    first = stub_server(script)
    summary = evaluate({"m": first.base_url}, ["chat-qa"], limit=10, store_url=store_url, retries=0, progress=False,
                       concurrency=1)
    assert summary.done == 4 and summary.errors == 6  # the server "went down" after four answers
    first.stop()

    healthy = Script(answer=qa_answers)
    second = stub_server(healthy)
    summary = evaluate({"m": second.base_url}, ["chat-qa"], limit=10, store_url=store_url, progress=False)
    assert summary.skipped == 4 and summary.done == 6
    assert len(healthy.requests) == 6  # only the unfinished items were sent
    asked = {r["messages"][-1]["content"] for r in healthy.requests}
    done_first = {r["messages"][-1]["content"] for r in script.requests[:4]}
    assert not asked & done_first

    again = evaluate({"m": second.base_url}, ["chat-qa"], limit=10, store_url=store_url, progress=False)
    assert again.done == 0 and again.skipped == 10 and len(healthy.requests) == 6

    rows = load_results(open_store(store_url))
    assert len(rows) == 10 and {r["status"] for r in rows} == {"ok"}
    by_id = {r["item_id"]: r for r in rows}
    assert by_id["fact-000"]["score"] == 1.0 and by_id["fact-000"]["output"] == "Paris"  # capital of France
    assert by_id["fact-003"]["score"] == 0.0  # Canada: the stub says 42
    assert all(r["latency_ms"] > 0 and r["prompt_tokens"] > 0 for r in rows)


def test_retries_absorb_transient_errors_and_costs_are_recorded(stub_server, store_url):
    script = Script(answer=qa_answers, fail_first=2)
    stub = stub_server(script)
    summary = evaluate({"m": stub.base_url}, ["chat-qa"], limit=3, store_url=store_url, retries=3, progress=False,
                       concurrency=1, prices={"m": "2:8"})
    assert summary.done == 3 and summary.errors == 0 and len(script.requests) == 5
    rows = load_results(open_store(store_url))
    for r in rows:
        assert r["cost_usd"] == pytest.approx((r["prompt_tokens"] * 2 + r["completion_tokens"] * 8) / 1e6)
    board = leaderboard(open_store(store_url))
    assert board[0].cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows))


def test_unreachable_endpoint_is_a_clear_error(store_url):
    with pytest.raises(UserError, match="unreachable"):
        evaluate({"m": "http://127.0.0.1:9/v1"}, ["chat-qa"], limit=1, store_url=store_url, progress=False)


def test_grader_crash_is_the_items_failure_not_the_runs(stub_server, store_url, tmp_path: Path):
    suite = tmp_path / "sheet"
    suite.mkdir()
    (suite / "suite.toml").write_text('name = "sheet"\ntask = "spreadsheet"\nkind = "generate"\ngrader = "formula"\n')
    items = [{"id": "ok", "prompt": "sum", "sheet": [[1], [2]], "expected": 3},
             {"id": "crash", "prompt": "crash", "sheet": 5, "expected": 3}]  # a malformed sheet breaks the grader
    (suite / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    stub = stub_server(Script(answer=lambda p: "=SUM(A1:A2)"))
    summary = evaluate({"m": stub.base_url}, [str(suite)], store_url=store_url, progress=False)
    assert summary.done == 2 and summary.grader_failures == 1
    rows = {r["item_id"]: r for r in load_results(open_store(store_url))}
    assert rows["ok"]["score"] == 1.0 and rows["ok"]["error"] == ""
    assert rows["crash"]["score"] == 0.0 and "grader 'formula' failed" in rows["crash"]["error"]


def test_loglikelihood_suite_scores_bits_per_byte(stub_server, store_url):
    suite = load_suite("code-completion")
    first = suite.items[0]
    stub = stub_server(Script(answer=lambda p: "    " + first["next_line"] if p == first["prompt"] else "pass"))
    evaluate({"m": stub.base_url}, ["code-completion"], limit=2, store_url=store_url, progress=False)
    rows = {r["item_id"]: r for r in load_results(open_store(store_url))}
    assert rows[first["id"]]["score"] == 1.0
    assert rows[suite.items[1]["id"]]["score"] == 0.0
    # The stub gives every character logprob -0.5: bits per byte = 0.5 / ln 2 on ASCII text.
    bpb = json.loads(rows[first["id"]]["metrics"])["bits_per_byte"]
    assert bpb == pytest.approx(0.5 / math.log(2), rel=1e-6)
    echo = [r for r in stub.script.requests if r.get("echo")]
    assert len(echo) == 2 and all(r["max_tokens"] == 1 and r["logprobs"] == 1 for r in echo)


def test_long_prompts_are_cut_from_the_left_to_fit_a_short_context(stub_server, store_url):
    item = load_suite("code-completion").items[0]
    limit = len(item["body"]) + 40  # room for the body and a little of the prompt
    stub = stub_server(Script(answer=lambda p: "    " + item["next_line"], max_context=limit))
    summary = evaluate({"m": stub.base_url}, ["code-completion"], limit=1, store_url=store_url, progress=False)
    assert summary.done == 1
    (row,) = load_results(open_store(store_url))
    assert row["error"] == "" and row["score"] == 1.0
    assert json.loads(row["metrics"])["bits_per_byte"] == pytest.approx(0.5 / math.log(2), rel=1e-6)
    echo = [r for r in stub.script.requests if r.get("echo")]
    assert len(echo[-1]["prompt"]) + 1 <= limit and echo[-1]["prompt"].endswith(item["body"])
    assert item["prompt"].endswith(echo[-1]["prompt"][: -len(item["body"])])  # only the left of the prompt was cut


def test_prices_and_in_house_flags_from_a_gateway_config(stub_server, store_url, tmp_path):
    from autarky.evals.results import stored_models

    stub = stub_server(Script(answer=qa_answers))
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[providers.local]
base_url = "{stub.base_url}"
in_house = true
[providers.partner]
base_url = "{stub.base_url}"
[models.ours]
provider = "local"
[models.theirs]
provider = "partner"
usd_per_1m_input = 0.15
usd_per_1m_output = 0.6
""")
    evaluate({"ours": stub.base_url, "theirs": stub.base_url}, ["chat-qa"], limit=1, store_url=store_url,
             progress=False, gateway_config=config, prices={"ours": "0.01:0.02"})
    info = stored_models(open_store(store_url))
    assert info["ours"]["in_house"] and not info["theirs"]["in_house"]
    assert (info["theirs"]["usd_in_per_1m"], info["theirs"]["usd_out_per_1m"]) == (0.15, 0.6)
    assert info["theirs"]["provider"] == "partner"
    assert info["ours"]["usd_in_per_1m"] == 0.01  # an explicit --price wins over the config


def test_max_tokens_cap_bounds_every_request(stub_server, store_url):
    stub = stub_server(Script(answer=qa_answers))
    evaluate({"m": stub.base_url}, ["python-functions", "chat-qa"], limit=2, store_url=store_url, progress=False,
             max_tokens_cap=16)
    assert sorted(r["max_tokens"] for r in stub.script.requests) == [16, 16, 16, 16]  # python-functions asks 384


def test_a_slow_server_is_not_sent_the_same_request_again(stub_server, store_url):
    script = Script(answer=qa_answers, delay_s=1.0)
    stub = stub_server(script)
    summary = evaluate({"m": stub.base_url}, ["chat-qa"], limit=1, store_url=store_url, progress=False,
                       timeout_s=0.3, retries=3)
    assert summary.errors == 1 and len(script.requests) == 1  # no retry storm on a server that is just slow
    (row,) = load_results(open_store(store_url), ok_only=False)
    assert row["status"] == "error" and "raise --timeout" in row["error"]


def test_an_edited_item_is_graded_again(stub_server, store_url, tmp_path):
    suite = tmp_path / "qa"
    suite.mkdir()
    (suite / "suite.toml").write_text('name = "qa"\ntask = "chat"\nkind = "generate"\ngrader = "exact-match"\n')
    items = [{"id": "a", "prompt": "capital of France?", "answers": ["Lyon"]}, {"id": "b", "prompt": "x", "answers": ["42"]}]
    (suite / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    script = Script(answer=qa_answers)
    stub = stub_server(script)
    evaluate({"m": stub.base_url}, [str(suite)], store_url=store_url, progress=False)
    items[0]["answers"] = ["Paris"]  # fix the answer key
    (suite / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    summary = evaluate({"m": stub.base_url}, [str(suite)], store_url=store_url, progress=False)
    assert summary.done == 1 and summary.skipped == 1 and len(script.requests) == 3
    assert {r["item_id"]: r["score"] for r in load_results(open_store(store_url))} == {"a": 1.0, "b": 1.0}


def test_data_dir_check_runs_before_any_request(stub_server, store_url, tiny_data_dir, tmp_path):
    import shutil

    script = Script(answer=qa_answers)
    stub = stub_server(script)
    evaluate({"m": stub.base_url}, ["code-completion"], limit=1, store_url=store_url, progress=False,
             data_dir=tiny_data_dir)
    assert len(script.requests) == 2  # held out: the echo request and the generation
    leaked = tmp_path / "data"
    shutil.copytree(tiny_data_dir, leaked)
    manifest = json.loads((leaked / "manifest.json").read_text())
    for doc in manifest["documents"]:
        doc["split"] = "train"
    (leaked / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="training split"):
        evaluate({"m": stub.base_url}, ["code-completion"], limit=1, store_url=store_url, progress=False,
                 data_dir=leaked, fresh=True)
    assert len(script.requests) == 2
