"""The tool-use suite: a product's own functions (a small company's tools), each item a user request, the tools
on offer (the right one among seeded distractors) and the one call that carries the request out. Graded on the
exact call (graders.grade_tool_call): that function, with arguments that validate and equal the expected ones.

Every request states each argument outright (ids, quoted titles, UTC times), so exactly one call is right.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

CURRENCIES = {"USD": "US dollars", "EUR": "euros", "GBP": "British pounds", "JPY": "Japanese yen",
              "CHF": "Swiss francs", "CAD": "Canadian dollars"}
PRIORITIES = ["low", "medium", "high", "urgent"]
REASONS = {"damaged": "it arrived damaged", "late": "it arrived two weeks late",
           "wrong_item": "we shipped the wrong item", "other": "the customer changed their mind"}
DEPARTMENTS = ["engineering", "sales", "finance", "marketing", "support"]
CITIES = ["Lisbon", "Toronto", "Nairobi", "Osaka", "Denver", "Krakow", "Austin", "Dublin", "Seoul", "Lyon"]
PEOPLE = ["ana", "raj", "li.wei", "omar", "sofia", "jonas", "priya", "mateo", "keiko", "noah"]
TITLES = ["Login page times out", "Invoice PDF shows wrong tax", "Dark mode toggle missing", "Export to CSV fails",
          "Password reset email not sent", "Dashboard loads slowly", "Search ignores accents", "Typo on pricing page"]
TAGS = ["billing", "frontend", "backend", "mobile", "security", "performance", "docs", "customer"]
REMINDERS = ["send the Q3 report to finance", "call the landlord", "renew the TLS certificate",
             "book flights for the offsite", "review Omar's pull request", "water the office plants"]


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}}}


_STR: dict[str, Any] = {"type": "string"}
_WHEN: dict[str, Any] = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC"}
TOOLS: dict[str, dict[str, Any]] = {t["function"]["name"]: t for t in (
    _tool("lookup_invoice", "Fetch an invoice by its id.", {"invoice_id": _STR}),
    _tool("create_ticket", "Open a support ticket.", {
        "title": _STR, "priority": {"type": "string", "enum": PRIORITIES},
        "tags": {"type": "array", "items": {"type": "string", "enum": TAGS}}}),
    _tool("convert_currency", "Convert an amount of money between currencies.", {
        "amount": {"type": "number"}, "from": {"type": "string", "enum": list(CURRENCIES)},
        "to": {"type": "string", "enum": list(CURRENCIES)}}),
    _tool("schedule_meeting", "Put a meeting in the attendees' calendars.", {
        "attendees": {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 1},
        "start": _WHEN, "duration_minutes": {"type": "integer", "minimum": 5}}),
    _tool("get_weather", "Current weather in a city.", {
        "city": _STR, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}),
    _tool("refund_order", "Refund (part of) an order.", {
        "order_id": _STR, "amount": {"type": "number", "minimum": 0}, "reason": {"type": "string", "enum": list(REASONS)}}),
    _tool("search_employees", "Find employees by department and office.", {
        "department": {"type": "string", "enum": DEPARTMENTS}, "location": _STR}),
    _tool("set_reminder", "Remind the user of something at a time.", {"text": _STR, "at": _WHEN}),
)}
UNORDERED = {"create_ticket": ["tags"], "schedule_meeting": ["attendees"]}

Request = tuple[str, dict[str, Any]]  # (user request, expected arguments)


def _when(rng: random.Random) -> tuple[str, str]:
    day, hour, minute = rng.randint(1, 28), rng.randint(8, 17), rng.choice([0, 15, 30, 45])
    month = rng.randint(1, 12)
    return f"2027-{month:02d}-{day:02d} at {hour:02d}:{minute:02d} UTC", f"2027-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00"


def _invoice(rng: random.Random) -> Request:
    ident = f"INV-{rng.randint(10000, 99999)}"
    text = rng.choice(["Pull up invoice {i} for me.", "What does invoice {i} say?", "Can you find invoice number {i}?"])
    return text.format(i=ident), {"invoice_id": ident}


def _ticket(rng: random.Random) -> Request:
    title, priority, tags = rng.choice(TITLES), rng.choice(PRIORITIES), rng.sample(TAGS, rng.randint(1, 3))
    listed = " and ".join(tags)
    return (f'Open a {priority}-priority ticket titled "{title}" and tag it {listed}.',
            {"title": title, "priority": priority, "tags": tags})


def _convert(rng: random.Random) -> Request:
    source, target = rng.sample(list(CURRENCIES), 2)
    amount = rng.choice([rng.randint(5, 5000), round(rng.uniform(1, 999), 2)])
    text = rng.choice(["How much is {a} {f} in {t}?", "Convert {a} {f} to {t}, please."])
    return text.format(a=amount, f=CURRENCIES[source], t=CURRENCIES[target]), {"amount": amount, "from": source, "to": target}


def _meeting(rng: random.Random) -> Request:
    people = [f"{p}@acme.example" for p in rng.sample(PEOPLE, rng.randint(1, 3))]
    said, start = _when(rng)
    minutes = rng.choice([15, 30, 45, 60, 90])
    return (f"Set up a {minutes}-minute meeting with {', '.join(people)} on {said}.",
            {"attendees": people, "start": start, "duration_minutes": minutes})


def _weather(rng: random.Random) -> Request:
    city, unit = rng.choice(CITIES), rng.choice(["celsius", "fahrenheit"])
    return f"What's the weather in {city} right now? Give it in {unit}.", {"city": city, "unit": unit}


def _refund(rng: random.Random) -> Request:
    order, reason = f"ORD-{rng.randint(100000, 999999)}", rng.choice(list(REASONS))
    amount = round(rng.uniform(5, 400), 2)
    return f"Refund ${amount} on order {order}; {REASONS[reason]}.", {"order_id": order, "amount": amount, "reason": reason}


def _employees(rng: random.Random) -> Request:
    department, city = rng.choice(DEPARTMENTS), rng.choice(CITIES)
    return (f"Who works in {department} at our {city} office?", {"department": department, "location": city})


def _reminder(rng: random.Random) -> Request:
    text, (said, at) = rng.choice(REMINDERS), _when(rng)
    return f'Remind me to "{text}" on {said}.', {"text": text, "at": at}


REQUESTS: dict[str, Callable[[random.Random], Request]] = {
    "lookup_invoice": _invoice, "create_ticket": _ticket, "convert_currency": _convert,
    "schedule_meeting": _meeting, "get_weather": _weather, "refund_order": _refund,
    "search_employees": _employees, "set_reminder": _reminder,
}
PER_TOOL = 30
OFFERED = 4  # tools on offer per item: the right one and three distractors


def items() -> list[dict[str, Any]]:
    rng = random.Random(20261201)
    out = []
    for i in range(PER_TOOL):
        for name, make in REQUESTS.items():
            prompt, arguments = make(rng)
            offered = [name, *rng.sample([t for t in TOOLS if t != name], OFFERED - 1)]
            rng.shuffle(offered)
            item: dict[str, Any] = {"id": f"{name}-{i:02d}", "prompt": prompt, "tools": [TOOLS[t] for t in offered],
                                    "expected": {"name": name, "arguments": arguments}}
            if name in UNORDERED:
                item["unordered"] = UNORDERED[name]
            out.append(item)
    return out
