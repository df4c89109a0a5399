"""The runner end to end on suites that ask for a format: tools and tool_choice go out, tool_calls come back and
are graded on the exact call; slides asks through json_schema; format validity is its own metric, per item, in
the leaderboard, its JSON and the report. Against the stub and against the partner simulator."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from autarky.cli import app
from autarky.demo.partners import Faults, make_app
from autarky.evals.api import evaluate, write_report
from autarky.evals.results import leaderboard, load_results
from autarky.evals.suite import load_suite
from autarky.store.database import open_store
from evals.stub_openai import Script, serve_app

LIMIT = 8  # one item of each of the eight functions


def expected_calls(every: int = 1) -> object:
    """A model that makes the expected call for every `every`-th item (by prompt) and answers text otherwise."""
    items = load_suite("tool-use").items[:LIMIT]
    wanted = {it["prompt"]: (i, it["expected"]) for i, it in enumerate(items)}

    def calls(body: dict) -> list[tuple[str, str]] | None:
        index, expected = wanted[body["messages"][-1]["content"]]
        return [(expected["name"], json.dumps(expected["arguments"]))] if index % every == 0 else None

    return calls


def by_suite(store_url: str) -> dict:
    return {(r.model, r.suite): r for r in leaderboard(open_store(store_url))}


def test_tool_use_sends_tools_and_grades_the_calls(stub_server, store_url):
    stub = stub_server(Script(answer=lambda p: "I would call lookup_invoice.", calls=expected_calls(every=2)))
    summary = evaluate({"m": stub.base_url}, ["tool-use"], limit=LIMIT, store_url=store_url, progress=False)
    assert summary.done == LIMIT
    items = {it["prompt"]: it for it in load_suite("tool-use").items[:LIMIT]}
    for body in stub.script.requests:
        assert body["tools"] == items[body["messages"][-1]["content"]]["tools"] and body["tool_choice"] == "auto"
        assert "response_format" not in body and body["messages"][0]["role"] == "system"
    row = by_suite(store_url)[("m", "tool-use")]
    assert (row.mean, row.format_valid) == (0.5, 0.5)  # the text answers score 0 and are not valid calls
    assert "format_valid" not in row.extra
    stored = {r["item_id"]: r for r in load_results(open_store(store_url))}
    first = json.loads(stored["lookup_invoice-00"]["output"])
    assert first["tool_calls"][0]["name"] == "lookup_invoice" and stored["lookup_invoice-00"]["score"] == 1.0
    assert json.loads(stored["create_ticket-00"]["metrics"]) == {"format_valid": 0.0}


def test_slides_asks_through_json_schema_and_format_is_apart_from_score(stub_server, store_url):
    deck = {"slides": [{"title": "Bicycle revenue", "bullets": ["Revenue grew", "Bicycle sales up"]}]}
    fenced = stub_server(Script(answer=lambda p: f"```json\n{json.dumps(deck)}\n```"))  # parses leniently only
    plain = stub_server(Script(answer=lambda p: json.dumps(deck)))
    evaluate({"fenced": fenced.base_url, "plain": plain.base_url}, ["slides"], limit=2, store_url=store_url,
             progress=False)
    fmt = plain.script.requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == load_suite("slides").response_schema
    board = by_suite(store_url)
    assert board[("fenced", "slides")].mean == board[("plain", "slides")].mean > 0
    assert (board[("fenced", "slides")].format_valid, board[("plain", "slides")].format_valid) == (0.0, 1.0)
    assert board[("plain", "slides")].extra["valid_json"] == 1.0
    details = [r["detail"] for r in load_results(open_store(store_url), models=["fenced"])]
    assert all("format: not JSON" in d for d in details)


def test_a_completions_endpoint_gets_the_deck_prompt_and_the_schema_judges_its_text(stub_server, store_url):
    deck = {"slides": [{"title": "Revenue", "bullets": ["Revenue grew", "Bicycle sales up"]}]}
    stub = stub_server(Script(answer=lambda p: json.dumps(deck)))
    evaluate({"base": stub.base_url}, ["slides"], limit=2, store_url=store_url, progress=False,
             modes={"base": "completions"})
    assert all("prompt" in body and "response_format" not in body for body in stub.script.requests)
    assert by_suite(store_url)[("base", "slides")].format_valid == 1.0


def test_an_endpoint_that_refuses_tools_or_cannot_carry_them_scores_zero(stub_server, store_url):
    stub = stub_server(Script())
    refusing = serve_app(_refusing_app())
    try:
        summary = evaluate({"refuses": f"http://127.0.0.1:{refusing[2]}/v1", "completions": stub.base_url},
                           ["tool-use"], limit=3, store_url=store_url, progress=False,
                           modes={"completions": "completions"})
    finally:
        refusing[0].should_exit = True
        refusing[1].join(timeout=10)
    assert summary.done == 6 and summary.errors == 0  # a final 400 is the item's result, not a retry
    board = by_suite(store_url)
    for model in ("refuses", "completions"):
        assert (board[(model, "tool-use")].mean, board[(model, "tool-use")].format_valid) == (0.0, 0.0)
        assert board[(model, "tool-use")].failures == 3
    assert not stub.script.requests  # completions mode cannot carry tools: nothing was sent
    errors = {r["model"]: r["error"] for r in load_results(open_store(store_url))}
    assert "unsupported_parameter" in errors["refuses"] and "completions mode" in errors["completions"]


def _refusing_app():
    from fastapi import FastAPI

    refusing = FastAPI()

    @refusing.get("/v1/models")
    def models() -> dict:
        return {"data": [{"id": "old"}]}

    @refusing.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        return JSONResponse({"error": {"message": "tools are not supported", "type": "invalid_request_error",
                                       "param": "tools", "code": "unsupported_parameter"}}, status_code=400)

    return refusing


def test_partner_simulator_makes_valid_calls_and_valid_decks(store_url, tmp_path):
    faults = Faults()
    server, thread, port = serve_app(make_app(faults))
    try:
        evaluate({"partner": f"http://127.0.0.1:{port}/v1"}, ["tool-use", "slides"], limit=4, store_url=store_url,
                 progress=False)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    board = by_suite(store_url)
    # Its calls are valid calls of declared tools with schema-valid arguments, but not the requested ones (it
    # calls the first two tools on offer with placeholder values): valid format, no task score.
    assert (board[("partner", "tool-use")].format_valid, board[("partner", "tool-use")].mean) == (1.0, 0.0)
    assert board[("partner", "slides")].format_valid == 1.0  # example(schema) of the deck schema
    assert sorted(("tools" in body, "response_format" in body) for _path, body in faults.bodies) \
        == [(False, True)] * 4 + [(True, False)] * 4

    runner = CliRunner()
    result = runner.invoke(app, ["eval", "leaderboard", "--json", "--store", store_url])
    rows = {r["suite"]: r for r in json.loads(result.output)}
    assert rows["tool-use"]["format_valid"] == 1.0 and rows["slides"]["format_valid"] == 1.0
    result = runner.invoke(app, ["eval", "leaderboard", "--store", store_url])
    header = next(line for line in result.output.splitlines() if "suite" in line and "model" in line)
    assert "format valid" in header  # its own column, apart from the score
    assert all("1.000" in line for line in result.output.splitlines() if "│ tool-use" in line)
    page = write_report(tmp_path / "report", store_url).read_text()
    assert page.count('class="format-valid">1.000') == 2
