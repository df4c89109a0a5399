"""LLM-judged battles, asked in both orders through an OpenAI-compatible endpoint (a scripted judge on 127.0.0.1)."""

from __future__ import annotations

from autarky.evals.api import evaluate
from autarky.evals.arena import arena_ratings
from autarky.evals.battles import judge_battles
from autarky.store.database import open_store
from evals.stub_openai import Script


def prefers_paris(prompt: str) -> str:
    if "Answer A:\nParis" in prompt:
        return "A"
    return "B" if "Answer B:\nParis" in prompt else "TIE"


def test_judge_both_orders_cancel_position_bias(stub_server, store_url):
    good = stub_server(Script(answer=lambda p: "Paris"))
    bad = stub_server(Script(answer=lambda p: "Lyon"))
    evaluate({"good": good.base_url, "bad": bad.base_url}, ["chat-qa"], limit=4, store_url=store_url, progress=False)
    fair = stub_server(Script(answer=prefers_paris), model="judge")
    battles = judge_battles(open_store(store_url), "chat-qa", fair.base_url, "judge")
    assert len(battles) == 4 and len(fair.script.requests) == 8  # every item judged in both orders
    assert all(b.winner == ("model_b" if b.model_b == "good" else "model_a") for b in battles)
    assert all(b.category == "chat" for b in battles)
    top = arena_ratings(battles, rounds=10)[0]
    assert top.model == "good"

    biased = stub_server(Script(answer=lambda p: "A"), model="judge")  # always prefers whatever it saw first
    battles = judge_battles(open_store(store_url), "chat-qa", biased.base_url, "judge")
    assert {b.winner for b in battles} == {"tie"}


def test_completions_mode_sends_plain_prompts(stub_server, store_url):
    stub = stub_server(Script(answer=lambda p: " Paris"))
    evaluate({"base": stub.base_url}, ["chat-qa"], limit=1, store_url=store_url, progress=False,
             modes={"base": "completions"})
    (request,) = stub.script.requests
    assert "messages" not in request and request["prompt"].endswith("What is the capital of France?")
