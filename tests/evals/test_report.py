"""The static report renders every section from real stored results."""

from __future__ import annotations

from autarky.evals.api import evaluate, write_report
from evals.stub_openai import Script


def test_report_renders_sections_and_items(stub_server, store_url, tmp_path):
    good = stub_server(Script(answer=lambda p: "Paris" if "France" in p else "=SUM(C2:C13)"))
    bad = stub_server(Script(answer=lambda p: "no idea"))
    evaluate({"good": good.base_url, "bad": bad.base_url}, ["chat-qa", "spreadsheet"], limit=4, store_url=store_url,
             in_house=["bad"], prices={"good": "1:2"}, progress=False)
    index = write_report(tmp_path / "report", store_url, prefer_in_house_within=5)
    page = index.read_text()
    for section in ('id="leaderboard"', 'id="matrix"', 'id="pareto"', 'id="routes"', 'id="arena"', 'id="items"'):
        assert section in page
    assert page.count("<svg") >= 3  # leaderboard + one Pareto plot per task (chat, spreadsheet)
    assert "good" in page and "bad" in page and "in-house" in page
    assert "fact-000" in page and "sum-units" in page  # per-item drill-down
    assert "Rank (UB)" in page
    assert "<script" not in page  # static, self-contained


def test_report_on_an_empty_store(store_url, tmp_path):
    page = write_report(tmp_path / "r", store_url).read_text()
    assert "No results yet" in page
