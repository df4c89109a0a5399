"""Generated python-functions tasks: parametrised families (e.g. "sum the multiples of k" for k = 2…11), so the
suite is large enough to tell two models apart. Each task's tests are computed here by running its reference body
on seeded inputs, so a reference passes its own tests by construction and tests/evals checks it in the sandbox.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Inputs = Callable[[random.Random, dict[str, Any]], tuple[Any, ...]]
WORDS = ["apple", "rebuild", "undo", "preview", "index", "decode", "exit", "cobalt", "tree", "rain", "sky", "extra",
         "unit", "prefix", "delta", "corner", "train", "input", "redo", "sun", "a", "be", "sea", "moon", "coast"]


def _ints(rng: random.Random, n: int = 8, lo: int = -20, hi: int = 40) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(n - 3, n))]


def _words(rng: random.Random, n: int = 6) -> list[str]:
    return rng.sample(WORDS, rng.randint(n - 2, n))


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS).capitalize() if rng.random() < 0.3 else rng.choice(WORDS) for _ in range(6))


@dataclass(frozen=True)
class Family:
    name: str  # entry point, formatted with the parameters
    args: str  # the signature's parameters
    doc: str
    body: str  # formatted with the parameters; 4-space indented continuation lines
    params: list[dict[str, Any]]
    inputs: Inputs  # one seeded call's arguments
    edge: tuple[Any, ...]  # an edge case every variant is tested on


FAMILIES: list[Family] = [
    Family("sum_multiples_of_{k}", "xs", "Return the sum of the elements of the integer list xs that are divisible by {k}.",
           "return sum(x for x in xs if x % {k} == 0)", [{"k": k} for k in range(2, 12)],
           lambda rng, p: (_ints(rng),), ([],)),
    Family("count_longer_than_{n}", "words", "Return how many strings in the list words have more than {n} characters.",
           "return sum(len(w) > {n} for w in words)", [{"n": n} for n in range(1, 11)],
           lambda rng, p: (_words(rng),), ([],)),
    Family("power_sum_{p}", "n", "Return 1**{p} + 2**{p} + ... + n**{p} for a non-negative integer n (0 for n = 0).",
           "return sum(i ** {p} for i in range(1, n + 1))", [{"p": p} for p in range(1, 6)],
           lambda rng, p: (rng.randint(1, 30),), (0,)),
    Family("repeat_chars_{k}", "s", "Return s with every character repeated {k} times ('ab' -> each of a and b {k} times).",
           "return ''.join(c * {k} for c in s)", [{"k": k} for k in range(2, 7)],
           lambda rng, p: (rng.choice(WORDS),), ("",)),
    Family("rotate_right_{k}", "xs", "Return the list xs rotated right by {k} positions (wrapping around); [] stays [].",
           "if not xs:\n        return []\n    k = {k} % len(xs)\n    return xs[-k:] + xs[:-k] if k else list(xs)",
           [{"k": k} for k in range(1, 9)], lambda rng, p: (_ints(rng),), ([],)),
    Family("every_{k}th", "xs", "Return every {k}-th element of xs, starting with the {k}-th (index {k} - 1).",
           "return xs[{k} - 1::{k}]", [{"k": k} for k in range(2, 10)], lambda rng, p: (_ints(rng, 12),), ([],)),
    Family("clip_{lo}_to_{hi}", "xs", "Return a new list with each number of xs limited to the range {lo}..{hi} (inclusive).",
           "return [min({hi}, max({lo}, x)) for x in xs]",
           [{"lo": lo, "hi": hi} for lo, hi in ((0, 10), (-5, 5), (1, 100), (10, 20), (0, 1), (-10, 0), (3, 7), (5, 30))],
           lambda rng, p: (_ints(rng),), ([],)),
    Family("count_letter_{c}", "s", "Return how many times the letter '{c}' occurs in s, ignoring case.",
           "return s.lower().count('{c}')", [{"c": c} for c in "aeiostrn"], lambda rng, p: (_text(rng),), ("",)),
    Family("words_starting_{p}", "words", "Return the strings in words that start with '{p}', ignoring case, in order.",
           "return [w for w in words if w.lower().startswith('{p}')]",
           [{"p": p} for p in ("re", "un", "pre", "in", "de", "ex", "co", "tr")],
           lambda rng, p: ([w.capitalize() if rng.random() < 0.3 else w for w in _words(rng, 10)],), ([],)),
    Family("digits_base_{b}", "n", "Return the digits of the non-negative integer n in base {b}, most significant first "
           "(0 gives [0]).", "digits = []\n    while True:\n        n, d = divmod(n, {b})\n        digits.append(d)\n"
           "        if n == 0:\n            return digits[::-1]", [{"b": b} for b in range(2, 10)],
           lambda rng, p: (rng.randint(1, 5000),), (0,)),
    Family("zero_pad_{w}", "n", "Return the non-negative integer n as a string left-padded with zeros to at least {w} "
           "characters.", "return str(n).rjust({w}, '0')", [{"w": w} for w in range(3, 11)],
           lambda rng, p: (rng.randint(0, 10 ** rng.randint(1, 12)),), (0,)),
    Family("top_{k}", "xs", "Return the {k} largest numbers of xs in descending order (all of them, sorted, if xs has "
           "fewer).", "return sorted(xs, reverse=True)[:{k}]", [{"k": k} for k in range(1, 7)],
           lambda rng, p: (_ints(rng, 10),), ([],)),
    Family("window_sums_{k}", "xs", "Return the sums of every run of {k} consecutive elements of xs, in order "
           "([] when xs is shorter than {k}).", "return [sum(xs[i:i + {k}]) for i in range(len(xs) - {k} + 1)]",
           [{"k": k} for k in range(2, 8)], lambda rng, p: (_ints(rng, 11),), ([1],)),
    Family("divisible_by_{a}_and_{b}", "n", "Return True if the integer n is divisible by both {a} and {b}.",
           "return n % {a} == 0 and n % {b} == 0",
           [{"a": a, "b": b} for a, b in ((2, 3), (3, 5), (4, 6), (2, 7), (5, 9), (6, 8))],
           lambda rng, p: (p["a"] * p["b"] * rng.randint(1, 9) + rng.choice((0, 0, 1, p["a"])),), (0,)),
    Family("mask_all_but_last_{k}", "s", "Return s with every character except the last {k} replaced by '*' (strings of "
           "{k} or fewer characters are unchanged).", "return '*' * max(0, len(s) - {k}) + s[-{k}:] if s else s",
           [{"k": k} for k in range(1, 7)], lambda rng, p: (str(rng.randint(10 ** 5, 10 ** 12)),), ("ab",)),
    Family("fizz_{a}_buzz_{b}", "n", "Return a list for 1..n: 'FizzBuzz' for multiples of both {a} and {b}, 'Fizz' for "
           "multiples of {a}, 'Buzz' for multiples of {b}, else the number itself as a string.",
           "out = []\n    for i in range(1, n + 1):\n        s = ('Fizz' if i % {a} == 0 else '') + ('Buzz' if i % {b} == 0 "
           "else '')\n        out.append(s or str(i))\n    return out",
           [{"a": a, "b": b} for a, b in ((3, 5), (2, 7), (4, 6), (3, 4), (5, 7), (2, 9))],
           lambda rng, p: (rng.randint(10, 30),), (0,)),
    Family("count_between_{lo}_{hi}", "xs", "Return how many numbers x in xs satisfy {lo} <= x < {hi}.",
           "return sum({lo} <= x < {hi} for x in xs)",
           [{"lo": lo, "hi": hi} for lo, hi in ((0, 10), (-5, 5), (10, 30), (1, 2), (-20, 0), (5, 25))],
           lambda rng, p: (_ints(rng, 12),), ([],)),
    Family("word_at_{i}", "s", "Return word number {i} (counting from 0) of the whitespace-separated words of s, or '' "
           "if s has fewer words.", "words = s.split()\n    return words[{i}] if len(words) > {i} else ''",
           [{"i": i} for i in range(6)], lambda rng, p: (_text(rng),), ("",)),
    Family("truncate_{n}", "s", "Return s unchanged if it has at most {n} characters, else its first {n} characters "
           "followed by '...'.", "return s if len(s) <= {n} else s[:{n}] + '...'",
           [{"n": n} for n in (5, 8, 10, 12, 16, 20)], lambda rng, p: (_text(rng),), ("",)),
    Family("sum_of_squares_over_{t}", "xs", "Return the sum of the squares of the numbers in xs that are greater than "
           "{t}.", "return sum(x * x for x in xs if x > {t})", [{"t": t} for t in (-10, 0, 5, 10, 20)],
           lambda rng, p: (_ints(rng),), ([],)),
    Family("replace_every_{k}th_char", "s", "Return s with every {k}-th character (positions {k}, 2*{k}, ... counting "
           "from 1) replaced by '#'.", "return ''.join('#' if (i + 1) % {k} == 0 else c for i, c in enumerate(s))",
           [{"k": k} for k in range(2, 8)], lambda rng, p: (_text(rng),), ("",)),
]


def family_tasks(seed: int = 20261201) -> list[tuple[str, str, str, str, str]]:
    """(entry point, signature, what it must do, reference body, tests), as python_functions.TASKS."""
    rng = random.Random(seed)
    out = []
    for family in FAMILIES:
        for params in family.params:
            spelled = {k: f"minus{-v}" if isinstance(v, int) and v < 0 else v for k, v in params.items()}  # a name
            name, body = family.name.format(**spelled), family.body.format(**params)
            namespace: dict[str, Any] = {}
            exec(f"def {name}({family.args}):\n    {body}\n", namespace)  # our own reference, to compute expectations
            calls = [family.inputs(rng, params) for _ in range(2)] + [family.edge]
            tests = "\n".join(f"assert {name}({', '.join(map(repr, args))}) == {namespace[name](*args)!r}"
                              for args in calls)
            out.append((name, f"def {name}({family.args})", family.doc.format(**params), body, tests))
    return out
