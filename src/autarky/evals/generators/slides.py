"""The slides suite: "outline a deck about …" graded by structure (see graders.grade_slides)."""

from __future__ import annotations

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


def items() -> list[dict]:
    rng = random.Random(20261123)
    low, high = BULLETS_PER_SLIDE
    out = []
    for i, (topic, terms) in enumerate(TOPICS):
        slides = rng.randint(3, 7)
        prompt = (
            f"Outline a presentation deck about {topic} with exactly {slides} slides. "
            f"Mention {', '.join(repr(t) for t in terms)}. Reply with only JSON of the form "
            '{"slides": [{"title": "...", "bullets": ["...", "..."]}, ...]}: '
            f"each title at most {MAX_TITLE_CHARS} characters, each slide {low} to {high} bullets, "
            f"each bullet at most {MAX_BULLET_CHARS} characters."
        )
        out.append({"id": f"deck-{i:02d}", "prompt": prompt, "slides": slides, "required_terms": terms, "topic": topic})
    return out
