"""Graders: turn one model output for one item into a score in [0, 1] (plus secondary metrics).

Each grader names the suite kinds it can grade and the item fields it needs; suites are checked against
that on load. A grader may raise on strange output; the runner records that as the item's failure.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autarky.errors import UserError
from autarky.evals import formats
from autarky.evals.sandbox_calls import run_tests


@dataclass
class Grade:
    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class Grader:
    name: str
    kinds: tuple[str, ...]
    required_fields: tuple[str, ...]
    grade: Callable[[dict[str, Any], str, dict[str, float]], Grade]


_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def strip_fences(text: str) -> str:
    """The first fenced block if there is one, else the text itself."""
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip()


# --- chat-qa: a correct answer, credited in a sentence (answer-match), and normalized exact match ----------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation.replace(".", "").replace("-", ""))


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation, keeping decimal points and minus signs so that numbers survive."""
    text = text.strip().lower().translate(_PUNCT)
    text = text.rstrip(".").replace(",", "")
    text = _ARTICLES.sub(" ", text)
    text = " ".join(text.split())
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def grade_exact(item: dict[str, Any], output: str, extras: dict[str, float]) -> Grade:
    answers = item["answers"] if isinstance(item["answers"], list) else [item["answers"]]
    got = normalize_answer(output.strip().splitlines()[0] if output.strip() else "")
    wanted = [normalize_answer(str(a)) for a in answers]
    ok = any(got == w for w in wanted)
    # Diagnostic only (the score is exact match): did a longer reply contain the answer as whole words?
    contains = any(re.search(rf"(^|\s){re.escape(w)}($|\s)", normalize_answer(output)) for w in wanted if w)
    return Grade(float(ok), {"contains_answer": float(contains)}, detail=f"normalized {got!r}")


MAX_ANSWER_WORDS = 30  # a longer first line is an essay, not an answer
_HEDGES = {"or"}  # "Paris or Lyon" names two answers
_SEPARATORS = {"and", "&"}  # with commas and semicolons: two or more make a list of options


def _canonical_tokens(text: str) -> list[str]:
    """Normalized words, a sentence's inner full stops dropped and numbers written one way ("7.0" → "7")."""
    tokens = []
    for token in normalize_answer(text).split():
        token = token.rstrip(".")
        tokens.append(normalize_answer(token) if token else token)
    return [t for t in tokens if t]


def _has_span(tokens: list[str], span: list[str]) -> bool:
    return bool(span) and any(tokens[i:i + len(span)] == span for i in range(len(tokens) - len(span) + 1))


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _answer_line(output: str) -> str:
    """The first non-blank line, fences and an "Answer:" label dropped (later lines are explanation)."""
    line = next((ln.strip() for ln in output.splitlines() if ln.strip() and not ln.strip().startswith("```")), "")
    return re.sub(r"^(final\s+)?answer\s*[:\-]\s*", "", line, flags=re.IGNORECASE)


def credited_answer(item: dict[str, Any], output: str) -> tuple[bool, str]:
    """Whether the reply's first line gives an accepted answer as a whole-word span ("The capital of France is
    Paris." counts), and why. Guards keep a reply that lists options from scoring: a hedge ("or"), two or more list
    separators (commas, semicolons, "and") beyond the question's and the answer's own, a number the question does
    not contain beside a numeric answer, or a first line over MAX_ANSWER_WORDS words. An answer the question itself
    contains ("Is 7 prime?") is credited only as an exact match, so echoing the question earns nothing."""
    answers = item["answers"] if isinstance(item["answers"], list) else [item["answers"]]
    line = _answer_line(output)
    tokens = _canonical_tokens(line)
    if not tokens:
        return False, "empty answer"
    if len(tokens) > MAX_ANSWER_WORDS:
        return False, f"first line has {len(tokens)} words (over {MAX_ANSWER_WORDS}): not a short answer"
    prompt = _canonical_tokens(str(item.get("prompt", "")))
    exact = normalize_answer(line)
    for answer in answers:
        span = _canonical_tokens(str(answer))
        if not span:
            continue
        if exact == normalize_answer(str(answer)):
            return True, f"exact {answer!r}"
        if not _has_span(tokens, span) or _has_span(prompt, span):
            continue
        own = set(prompt) | set(span)
        if any(t in _HEDGES and t not in own for t in tokens):
            return False, f"{answer!r} among alternatives (hedged with 'or')"
        separators = sum(t in _SEPARATORS and t not in own for t in tokens)
        separators += max(0, line.count(",") + line.count(";") - str(item.get("prompt", "")).count(",")
                          - str(answer).count(","))
        if separators >= 2:
            return False, f"{answer!r} in a list of options"
        if len(span) == 1 and _is_number(span[0]):
            others = sorted({t for t in tokens if _is_number(t) and t != span[0] and t not in prompt})
            if others:
                return False, f"{answer!r} beside other numbers {', '.join(others)}"
        return True, f"contains {answer!r}"
    return False, f"no accepted answer in {line[:80]!r}"


def grade_answer(item: dict[str, Any], output: str, extras: dict[str, float]) -> Grade:
    """The product metric for questions: a correct answer counts in a sentence; strict format is `exact_match`."""
    ok, why = credited_answer(item, output)
    strict = grade_exact(item, output, extras).score
    return Grade(float(ok), {"exact_match": strict}, detail=why)


# --- python-functions: unit tests in the sandbox ---------------------------------------------------------

_CODE_START = re.compile(r"^(def|class|import|from|@)\b")


def _compiles(code: str) -> bool:
    try:
        compile(code, "<answer>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def extract_code(output: str, entry_point: str | None = None) -> str:
    """The program in a model's answer: the first fenced block (or the whole answer) that compiles and defines
    `entry_point`; else, for code written inside prose, the longest run of lines from the first `def`/`import`/...
    line that compiles; else the first fenced block, whose failure the tests then report."""
    defines = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE) if entry_point else None
    for block in [m.group(1) for m in _FENCE.finditer(output)] + [output]:
        if _compiles(block) and (defines is None or defines.search(block)):
            return block.strip()
    lines = output.splitlines()
    start = next((i for i, ln in enumerate(lines) if _CODE_START.match(ln)), None)
    if start is not None:
        for end in range(len(lines), start, -1):
            code = "\n".join(lines[start:end])
            if _compiles(code) and (defines is None or defines.search(code)):
                return code.strip()
    return strip_fences(output)


def grade_python_tests(item: dict[str, Any], output: str, extras: dict[str, float]) -> Grade:
    # The tests run here, against the sandboxed functions: nothing the code outputs can fake a pass.
    code = extract_code(output, item.get("entry_point"))
    verdict = run_tests(code, item["tests"], timeout_s=float(item.get("timeout_s", 5.0)))
    return Grade(float(verdict.passed), detail="timed out" if verdict.timed_out else verdict.detail[:500])


# --- spreadsheet: evaluate the formula with the `formulas` engine ---------------------------------------

_CELL = re.compile(r"^\$?([A-Z]{1,3})\$?(\d+)$")


def _column_index(letters: str) -> int:
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - 64)
    return index - 1


def _range_values(ref: str, sheet: list[list[Any]]) -> Any:
    import numpy as np

    ref = ref.split("!")[-1].upper()
    corners = ref.split(":")
    cells = []
    for corner in corners:
        match = _CELL.match(corner)
        if match is None:
            raise ValueError(f"unsupported reference {ref!r}; use A1-style cells or ranges like B2:B11")
        cells.append((int(match.group(2)) - 1, _column_index(match.group(1))))
    (r0, c0), (r1, c1) = cells[0], cells[-1]
    block = [
        [sheet[r][c] if r < len(sheet) and c < len(sheet[r]) and sheet[r][c] is not None else "" for c in range(c0, c1 + 1)]
        for r in range(r0, r1 + 1)
    ]
    if len(corners) == 1:
        return block[0][0]
    return np.array(block, dtype=object)


def evaluate_formula(formula: str, sheet: list[list[Any]]) -> Any:
    """The value of `formula` over `sheet` (row 1 first, column A first), as a Python scalar."""
    import formulas
    import numpy as np

    formula = formula.strip()
    if not formula.startswith("="):
        formula = "=" + formula
    func = formulas.Parser().ast(formula)[1].compile()
    value = func(*[_range_values(name, sheet) for name in func.inputs])
    while isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _parses(formula: str) -> bool:
    import formulas
    from formulas.errors import BaseError

    try:
        formulas.Parser().ast(formula)
    except (BaseError, ValueError, IndexError, TypeError):
        return False
    return True


_BARE_FORMULA = re.compile(r"^[A-Za-z][A-Za-z0-9.]*\(.*\)$")
_CELL_REF = re.compile(r"\$?[A-Za-z]{1,3}\$?\d+")


def extract_formula(output: str) -> str | None:
    """The formula in a model's answer: a line that is a formula (fenced or not), else the longest parseable
    formula starting at an '=' inside prose ("use =SUM(C2:C13) to ..."), else a line that is a function call over
    cells without its '=' ("SUM(C2:C13)"); None when there is none."""
    lines = [ln.strip().strip("`").strip() for ln in strip_fences(output).splitlines() + output.splitlines()]
    for line in lines:
        if line.startswith("=") and _parses(line):
            return line
    for line in lines:
        for start in (i for i, ch in enumerate(line) if ch == "="):
            tail = line[start:].rstrip(" .,;:`")
            ends = [len(tail)] + [i + 1 for i in range(len(tail) - 1, 0, -1) if tail[i] == ")"]
            for end in ends:
                if _parses(tail[:end]):
                    return tail[:end]
    for line in lines:  # a formula written without its "=" ("SUM(C2:C13)"); a bare number stays no formula
        head = line.rstrip(" .,;:")
        if _BARE_FORMULA.match(head) and _CELL_REF.search(head) and _parses("=" + head):
            return "=" + head
    return next((line for line in lines if line.startswith("=")), None)


def values_equal(got: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return str(got).upper() == str(expected).upper()
    if isinstance(expected, (int, float)):
        try:
            return math.isclose(float(got), float(expected), rel_tol=1e-6, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return str(got).strip() == str(expected).strip()


def grade_formula(item: dict[str, Any], output: str, extras: dict[str, float]) -> Grade:
    from formulas.errors import BaseError

    formula = extract_formula(output)
    if formula is None:
        return Grade(0.0, detail="no formula (a line or phrase starting with '=') in the answer")
    try:
        value = evaluate_formula(formula, item["sheet"])
    except (BaseError, ValueError) as exc:  # the model's formula is broken: a wrong answer, not a grader crash
        return Grade(0.0, detail=f"{formula}: {type(exc).__name__}: {str(exc)[:200]}")
    ok = values_equal(value, item["expected"])
    return Grade(float(ok), detail=f"{formula} -> {value!r}")


# --- slides: structure of a JSON outline -----------------------------------------------------------------

MAX_TITLE_CHARS = 60
MAX_BULLET_CHARS = 120
BULLETS_PER_SLIDE = (2, 6)


def parse_json_answer(output: str) -> Any:
    text = strip_fences(output)
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no JSON object in the answer")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def grade_slides(item: dict[str, Any], output: str, extras: dict[str, float]) -> Grade:
    try:
        deck = parse_json_answer(output)
    except (ValueError, json.JSONDecodeError) as exc:
        return Grade(0.0, {"valid_json": 0.0}, detail=f"invalid JSON: {exc}")
    slides = deck.get("slides") if isinstance(deck, dict) else None
    if not isinstance(slides, list) or not all(isinstance(s, dict) for s in slides):
        return Grade(0.0, {"valid_json": 1.0}, detail='expected {"slides": [{"title": ..., "bullets": [...]}]}')
    titles = [s.get("title") for s in slides]
    bullets = [s.get("bullets") for s in slides]
    low, high = BULLETS_PER_SLIDE
    checks = {
        "valid_json": 1.0,
        "slide_count": float(len(slides) == int(item["slides"])),
        "titles": float(bool(slides) and all(isinstance(t, str) and 0 < len(t) <= MAX_TITLE_CHARS for t in titles)),
        "bullets": float(
            bool(slides)
            and all(
                isinstance(b, list) and low <= len(b) <= high
                and all(isinstance(x, str) and 0 < len(x) <= MAX_BULLET_CHARS for x in b)
                for b in bullets
            )
        ),
    }
    text = json.dumps(deck).lower()
    terms = [str(t).lower() for t in item.get("required_terms", [])]
    checks["required_terms"] = sum(t in text for t in terms) / len(terms) if terms else 1.0
    failed = [name for name, value in checks.items() if value < 1.0]
    return Grade(sum(checks.values()) / len(checks), checks, detail="all checks passed" if not failed else f"failed: {', '.join(failed)}")


# --- code-completion: next-line exact match; bits per byte comes from the runner's logprob call ---------

def grade_code_completion(item: dict[str, Any], output: str, extras: dict[str, float]) -> Grade:
    """Exact match of the first non-blank generated line (indentation ignored) with the body's first line."""
    want = item["next_line"].strip()
    # A fence line ("```python") is wrapping, not the model's next line of code.
    got = next((line.strip() for line in output.splitlines() if line.strip() and not line.strip().startswith("```")), "")
    metrics = {k: v for k, v in extras.items() if k == "bits_per_byte"}
    return Grade(float(got == want), metrics, detail=f"next line {got!r}")


# --- tool-use: the exact call (the output is the runner's envelope of the wire's tool_calls) ---------------

def grade_tool_call(item: dict[str, Any], output: str, extras: dict[str, float]) -> Grade:
    """1 for exactly the expected call (formats.exact_call); format_valid when every call is a valid one."""
    score, valid, detail = formats.exact_call(item, output)
    return Grade(score, {"format_valid": valid}, detail=detail)


def grade_none(item: dict[str, Any], output: str, extras: dict[str, float]) -> Grade:
    return Grade(0.0, detail="pairwise suite: outputs are compared by `autarky arena --judge`")


GRADERS: dict[str, Grader] = {
    g.name: g
    for g in (
        Grader("exact-match", ("generate",), ("answers",), grade_exact),
        Grader("answer-match", ("generate",), ("answers",), grade_answer),
        Grader("python-tests", ("generate",), ("tests",), grade_python_tests),
        Grader("formula", ("generate",), ("sheet", "expected"), grade_formula),
        Grader("slides-structure", ("generate",), ("slides",), grade_slides),
        Grader("tool-call", ("generate",), ("tools", "expected"), grade_tool_call),
        Grader("code-completion", ("loglikelihood",), ("body", "next_line"), grade_code_completion),
        Grader("none", ("pairwise",), (), grade_none),
    )
}


def get_grader(name: str) -> Grader:
    try:
        return GRADERS[name]
    except KeyError:
        raise UserError(f"unknown grader {name!r}; choose one of {', '.join(sorted(GRADERS))}") from None
