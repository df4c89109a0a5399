"""The slides suite: "outline a deck about …" graded by structure (see graders.grade_slides). The 32 topics of the
first release come first (the demo's subset), then every topic again for four audiences, seeded slide counts."""

from __future__ import annotations

import json
import random

from autarky.evals.graders import BULLETS_PER_SLIDE, MAX_BULLET_CHARS, MAX_TITLE_CHARS

# (topic, terms the deck must mention)
TOPICS: list[tuple[str, list[str]]] = [
    ("quarterly sales results for a bicycle company", ["revenue", "bicycle"]),
    ("onboarding new software engineers", ["onboarding", "code review"]),
    ("migrating a database to PostgreSQL", ["PostgreSQL", "migration"]),
    ("the benefits of solar panels for homeowners", ["solar", "savings"]),
    ("a product launch plan for a smartwatch", ["launch", "smartwatch"]),
    ("cybersecurity basics for employees", ["password", "phishing"]),
    ("the water cycle for a middle-school class", ["evaporation", "precipitation"]),
    ("a budget proposal for a community garden", ["budget", "garden"]),
    ("remote work policy updates", ["remote", "policy"]),
    ("an introduction to machine learning", ["model", "training"]),
    ("reducing customer churn in a subscription business", ["churn", "retention"]),
    ("the history of the printing press", ["Gutenberg", "printing"]),
    ("a marketing plan for a coffee shop", ["coffee", "customers"]),
    ("preparing for a job interview", ["interview", "questions"]),
    ("healthy eating habits", ["vegetables", "protein"]),
    ("a retrospective on a late software project", ["deadline", "lessons"]),
    ("the basics of personal finance", ["budget", "savings"]),
    ("choosing a cloud provider", ["cost", "region"]),
    ("an annual safety training for a warehouse", ["safety", "forklift"]),
    ("the roadmap of a mobile app for next year", ["roadmap", "release"]),
    ("climate change and coastal cities", ["sea level", "flooding"]),
    ("a fundraising pitch for a robotics startup", ["robot", "investors"]),
    ("how vaccines work", ["immune", "antibodies"]),
    ("improving meeting productivity", ["agenda", "meeting"]),
    ("a travel guide to Japan", ["Tokyo", "travel"]),
    ("the results of a customer satisfaction survey", ["survey", "satisfaction"]),
    ("an introduction to the Python programming language", ["Python", "functions"]),
    ("planning a company offsite", ["venue", "schedule"]),
    ("the life cycle of a star", ["supernova", "hydrogen"]),
    ("data privacy regulations for a small business", ["GDPR", "consent"]),
    ("a proposal to adopt electric delivery vans", ["electric", "charging"]),
    ("lessons from a failed product experiment", ["experiment", "hypothesis"]),
]
MORE_TOPICS: list[tuple[str, list[str]]] = [
    ("a quarterly report on warehouse inventory", ["inventory", "stock"]),
    ("introducing a new expense policy", ["expenses", "approval"]),
    ("the results of an A/B test on a checkout page", ["conversion", "variant"]),
    ("an incident review of a website outage", ["outage", "root cause"]),
    ("hiring plans for the data team", ["hiring", "analysts"]),
    ("a sustainability report for a factory", ["emissions", "energy"]),
    ("customer support metrics for last month", ["tickets", "response time"]),
    ("a proposal for a four-day work week", ["productivity", "schedule"]),
    ("a beginner's guide to spreadsheets", ["formula", "cells"]),
    ("pricing strategy for a software product", ["pricing", "tiers"]),
]
# The deck as the requests ask for it (response_format json_schema, strict: every property required, no others).
# Lengths are left to the grader: strict structured output does not take maxLength everywhere.
DECK_SCHEMA = {
    "type": "object",
    "properties": {"slides": {"type": "array", "minItems": 1, "items": {
        "type": "object",
        "properties": {"title": {"type": "string"}, "bullets": {
            "type": "array", "items": {"type": "string"},
            "minItems": BULLETS_PER_SLIDE[0], "maxItems": BULLETS_PER_SLIDE[1]}},
        "required": ["title", "bullets"], "additionalProperties": False}}},
    "required": ["slides"],
    "additionalProperties": False,
}


def schema_json() -> str:
    return json.dumps(DECK_SCHEMA, indent=2) + "\n"


AUDIENCES = ["executives", "new employees", "customers", "a school class"]


def _prompt(topic: str, terms: list[str], slides: int, audience: str = "") -> str:
    low, high = BULLETS_PER_SLIDE
    return (f"Outline a presentation deck{f' for {audience}' if audience else ''} about {topic} with exactly {slides} "
            "slides. "
            f"Mention {', '.join(repr(t) for t in terms)}. Reply with only JSON of the form "
            '{"slides": [{"title": "...", "bullets": ["...", "..."]}, ...]}: '
            f"each title at most {MAX_TITLE_CHARS} characters, each slide {low} to {high} bullets, "
            f"each bullet at most {MAX_BULLET_CHARS} characters.")


def items() -> list[dict]:
    rng = random.Random(20261123)
    out = []
    for i, (topic, terms) in enumerate(TOPICS):
        slides = rng.randint(3, 7)
        out.append({"id": f"deck-{i:02d}", "prompt": _prompt(topic, terms, slides), "slides": slides,
                    "required_terms": terms, "topic": topic})
    for i, (topic, terms) in enumerate(TOPICS + MORE_TOPICS):
        for j, audience in enumerate(AUDIENCES):
            slides = rng.randint(3, 7)
            out.append({"id": f"deck-{i:02d}-{j}", "prompt": _prompt(topic, terms, slides, audience),
                        "slides": slides, "required_terms": terms, "topic": topic})
    return out
