"""The spreadsheet suite: "write a formula that …" over a small sales sheet: the company sheet below first (the
demo's subset), then seeded random sheets of the same shape, a few tasks each, so the suite can tell models apart.

Expected values are computed here in plain Python (not by the formula engine), and every task carries a
reference formula; tests check that the engine evaluates each reference to the expected value, so the suite,
the grader and the engine are cross-checked against each other.
"""

from __future__ import annotations

import random
from typing import Any

HEADER = ["Region", "Product", "Units", "Price", "Rep"]
ROWS: list[list[Any]] = [
    ["North", "Widget", 12, 2.5, "Ana"],
    ["South", "Gadget", 40, 10.0, "Ben"],
    ["East", "Widget", 7, 2.5, "Chen"],
    ["West", "Gizmo", 25, 4.75, "Dara"],
    ["North", "Gadget", 60, 9.5, "Eli"],
    ["South", "Gizmo", 18, 5.0, "Fay"],
    ["East", "Gadget", 33, 10.5, "Gus"],
    ["West", "Widget", 51, 2.25, "Hana"],
    ["North", "Gizmo", 9, 4.5, "Ivan"],
    ["South", "Widget", 70, 2.0, "Jo"],
    ["East", "Gizmo", 14, 5.25, "Kai"],
    ["West", "Gadget", 28, 11.0, "Lia"],
]
SHEET = [HEADER, *ROWS]
FIRST, LAST = 2, 1 + len(ROWS)  # data rows in sheet coordinates
COL = {"Region": "A", "Product": "B", "Units": "C", "Price": "D", "Rep": "E"}


def render_sheet(sheet: list[list[Any]] = SHEET) -> str:
    lines = ["    | " + " | ".join("ABCDE")]
    for i, row in enumerate(sheet, start=1):
        lines.append(f"{i:>3} | " + " | ".join(str(v) for v in row))
    return "\n".join(lines)


def tasks(rows: list[list[Any]] = ROWS) -> list[tuple[str, str, str, Any]]:
    """(id, what the formula must compute, reference formula, expected value) over the sheet [HEADER, *rows]."""
    last = FIRST + len(rows) - 1

    def _rng(name: str) -> str:
        return f"{COL[name]}{FIRST}:{COL[name]}{last}"

    units, price, region, product, rep = ([r[HEADER.index(n)] for r in rows]
                                          for n in ("Units", "Price", "Region", "Product", "Rep"))
    out: list[tuple[str, str, str, Any]] = []
    for name, values in (("Units", units), ("Price", price)):
        low = name.lower()
        out += [
            (f"sum-{low}", f"the total of the {name} column", f"=SUM({_rng(name)})", sum(values)),
            (f"avg-{low}", f"the average of the {name} column", f"=AVERAGE({_rng(name)})", sum(values) / len(values)),
            (f"max-{low}", f"the largest value in the {name} column", f"=MAX({_rng(name)})", max(values)),
            (f"min-{low}", f"the smallest value in the {name} column", f"=MIN({_rng(name)})", min(values)),
        ]
    for reg in ("North", "South", "East", "West"):
        sel = [u for u, r in zip(units, region, strict=True) if r == reg]
        out += [
            (f"count-{reg.lower()}", f"how many rows have Region {reg}", f'=COUNTIF({_rng("Region")},"{reg}")', len(sel)),
            (f"units-{reg.lower()}", f"the total Units sold in the {reg} region",
             f'=SUMIF({_rng("Region")},"{reg}",{_rng("Units")})', sum(sel)),
        ]
    for prod in ("Widget", "Gadget", "Gizmo"):
        sel_u = [u for u, p in zip(units, product, strict=True) if p == prod]
        sel_p = [x for x, p in zip(price, product, strict=True) if p == prod]
        out.append((f"units-{prod.lower()}", f"the total Units of product {prod}",
                    f'=SUMIF({_rng("Product")},"{prod}",{_rng("Units")})', sum(sel_u)))
        if sel_p:  # AVERAGEIF over no rows is #DIV/0!
            out.append((f"avgprice-{prod.lower()}", f"the average Price of product {prod}",
                        f'=AVERAGEIF({_rng("Product")},"{prod}",{_rng("Price")})', sum(sel_p) / len(sel_p)))
    for threshold in (10, 25, 50):
        out.append((f"count-units-over-{threshold}", f"how many rows have more than {threshold} Units",
                    f'=COUNTIF({_rng("Units")},">{threshold}")', sum(u > threshold for u in units)))
    for reg, prod in (("North", "Gadget"), ("South", "Widget"), ("East", "Gizmo"), ("West", "Widget")):
        total = sum(u for u, r, p in zip(units, region, product, strict=True) if r == reg and p == prod)
        out.append((f"units-{reg.lower()}-{prod.lower()}", f"the total Units of {prod} sold in the {reg} region",
                    f'=SUMIFS({_rng("Units")},{_rng("Region")},"{reg}",{_rng("Product")},"{prod}")', total))
    out.append(("count-gadget-price-over-10", "how many Gadget rows have a Price above 10",
                f'=COUNTIFS({_rng("Product")},"Gadget",{_rng("Price")},">10")',
                sum(p == "Gadget" and x > 10 for p, x in zip(product, price, strict=True))))
    out.append(("revenue-total", "the total revenue, i.e. the sum over rows of Units times Price",
                f'=SUMPRODUCT({_rng("Units")},{_rng("Price")})', sum(u * x for u, x in zip(units, price, strict=True))))
    for i in _within((0, 4, 9), rows):
        row = FIRST + i
        out.append((f"revenue-row-{row}", f"the revenue (Units times Price) of row {row}", f"=C{row}*D{row}", units[i] * price[i]))
    for i in _within((1, 6, 10, 11), rows):
        out.append((f"units-of-{rep[i].lower()}", f"the Units sold by the rep named {rep[i]} (look the name up in column E)",
                    f'=INDEX({_rng("Units")},MATCH("{rep[i]}",{_rng("Rep")},0))', units[i]))
    out.append(("avg-price-rounded", "the average Price rounded to 1 decimal place", f'=ROUND(AVERAGE({_rng("Price")}),1)',
                round(sum(price) / len(price), 1)))
    for i in _within((2, 7), rows):
        row = FIRST + i
        out.append((f"upper-rep-{row}", f"the Rep name in row {row} in upper case", f"=UPPER(E{row})", rep[i].upper()))
        out.append((f"len-product-{row}", f"the number of characters of the Product in row {row}", f"=LEN(B{row})", len(product[i])))
        out.append((f"label-{row}", f'the Region and Product of row {row} joined by a hyphen, e.g. "North-Widget"',
                    f'=A{row}&"-"&B{row}', f"{region[i]}-{product[i]}"))
    for i in _within((0, 4, 7), rows):
        row = FIRST + i
        out.append((f"high-low-{row}", f'"High" if row {row} has more than 50 Units, otherwise "Low"',
                    f'=IF(C{row}>50,"High","Low")', "High" if units[i] > 50 else "Low"))
    for reg in ("North", "West"):
        share = sum(u for u, r in zip(units, region, strict=True) if r == reg) / sum(units)
        out.append((f"share-{reg.lower()}", f"the {reg} region's share of all Units as a fraction rounded to 3 decimals",
                    f'=ROUND(SUMIF({_rng("Region")},"{reg}",{_rng("Units")})/SUM({_rng("Units")}),3)', round(share, 3)))
    out.append(("count-rows", "the number of data rows (count the numbers in the Units column)", f'=COUNT({_rng("Units")})', len(units)))
    out.append(("units-range", "the difference between the largest and the smallest Units", f'=MAX({_rng("Units")})-MIN({_rng("Units")})',
                max(units) - min(units)))
    if "Widget" in product:
        out.append(("price-max-widget", "the highest Price among Widget rows",
                    f'=MAX(IF({_rng("Product")}="Widget",{_rng("Price")}))',
                    max(x for x, p in zip(price, product, strict=True) if p == "Widget")))
    if any(u > 20 for u in units):
        out.append(("avg-units-over-20", "the average Units over rows with more than 20 Units",
                    f'=AVERAGEIF({_rng("Units")},">20")', sum(u for u in units if u > 20) / sum(u > 20 for u in units)))
    return out


def _within(indices: tuple[int, ...], rows: list[list[Any]]) -> list[int]:
    return [i for i in indices if i < len(rows)]


REPS = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lia", "Mo", "Nia", "Omar",
        "Pia", "Raj", "Sol", "Tess", "Uma", "Vik", "Wen", "Xavi", "Yara", "Zoe"]
RANDOM_SHEETS, RANDOM_ROWS, TASKS_PER_SHEET = 37, 6, 4


def random_rows(rng: random.Random, n: int = RANDOM_ROWS) -> list[list[Any]]:
    """A sales sheet of the company sheet's shape: random regions, products, units, prices and distinct reps."""
    return [[rng.choice(("North", "South", "East", "West")), rng.choice(("Widget", "Gadget", "Gizmo")),
             rng.randint(1, 80), rng.randint(8, 48) / 4, rep] for rep in rng.sample(REPS, n)]


def _item(item_id: str, rows: list[list[Any]], what: str, reference: str, expected: Any) -> dict:
    sheet = [HEADER, *rows]
    return {
        "id": item_id,
        "prompt": (f"Here is a spreadsheet (row 1 holds the headers, data is in rows {FIRST}-{FIRST + len(rows) - 1}):\n"
                   f"{render_sheet(sheet)}\n\nWrite one spreadsheet formula that computes {what}. "
                   "Reply with only the formula, starting with =."),
        "sheet": sheet,
        "expected": expected,
        "reference": reference,
    }


def items() -> list[dict]:
    out = [_item(task_id, ROWS, what, reference, expected) for task_id, what, reference, expected in tasks()]
    rng = random.Random(20261201)
    for j in range(RANDOM_SHEETS):
        rows = random_rows(rng)
        for task_id, what, reference, expected in rng.sample(tasks(rows), TASKS_PER_SHEET):
            out.append(_item(f"sheet{j:02d}-{task_id}", rows, what, reference, expected))
    return out
