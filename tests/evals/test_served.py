"""End to end against `autarky serve` (a real tiny model on 127.0.0.1): generate and likelihood suites."""

from __future__ import annotations

import json
import math

import pytest

from autarky.evals.api import evaluate
from autarky.evals.results import load_results
from autarky.store.database import open_store


@pytest.mark.slow
def test_eval_against_our_server(served_tiny_model, store_url):
    url = served_tiny_model.base_url
    summary = evaluate({"tiny": url}, ["chat-qa", "code-completion"], limit=3, store_url=store_url, progress=False,
                       in_house=["tiny"], timeout_s=60)
    assert summary.errors == 0 and summary.done == 6
    rows = load_results(open_store(store_url))
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    chat = [r for r in rows if r["suite"] == "chat-qa"]
    assert all(r["completion_tokens"] > 0 and r["latency_ms"] > 0 for r in chat)
    scored = [json.loads(r["metrics"]).get("bits_per_byte") for r in rows if r["suite"] == "code-completion"]
    scored = [b for b in scored if b is not None]
    assert scored, [r["error"] for r in rows if r["suite"] == "code-completion"]
    # A random 512-token model is no better than a few bits per byte, and never negative.
    assert all(math.isfinite(b) and 0 < b < 40 for b in scored)
