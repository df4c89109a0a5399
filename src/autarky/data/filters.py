"""Per-document rules: quality filters (length, symbol ratio, repeated lines) and the PII pass.

Each rule is a pure function of one document's text, so a task applies them without seeing the rest of the
corpus, and the manifest can say how many documents each removed. The PII patterns are deliberately simple
regular expressions (credit cards confirmed by the Luhn check): they find the common forms and are a record of
what a data set contains, not a guarantee that it contains nothing personal.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from autarky.data.config import QualityConfig

_SPACE = re.compile(r"\s")
_SYMBOL = re.compile(r"[^\w\s]|_")  # \w counts "_" as a word character; it is a symbol here

PII_KINDS = ("email", "phone", "ip", "credit_card", "secret")
_REDACTION = {kind: f"<{kind.upper()}>" for kind in PII_KINDS}

# Digits are ASCII ([0-9], not \d): numbers people type into forms are, and it lets a document without any skip
# the digit patterns after a few memchr-speed scans (Python's `re` has no fast scan for a character class).
_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    # International (+CC ...) or North-American style numbers with separators; bare digit runs are not phones.
    # Not part of a longer run of digit groups (a card number, a version string).
    "phone": re.compile(
        r"(?<![\w.])(?<![0-9][ .-])(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{2,4}\)[ .-]?|[0-9]{2,4}[ .-])[0-9]{3,4}[ .-][0-9]{3,4}"
        r"(?![\w.])(?![ .-][0-9])"
    ),
    "ip": re.compile(
        r"(?<![\w.])(?:(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(?![\w.])"
    ),
    "credit_card": re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])"),
    # The key= forms match their prefix too (a lookbehind would be tried at every position); it is kept on redaction.
    "secret": re.compile(
        r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abpr]-[A-Za-z0-9-]{10,}"
        r"|AIza[0-9A-Za-z_-]{35})\b"
        r"|(?P<prefix>(?i:api_key=|api_key: |secret_key=|access_token=))[A-Za-z0-9_\-]{16,}"
    ),
}

# What a document must contain for a kind to match at all: a cheap test before the full expression runs. The
# full ones start with a lookbehind, which stops `re` from skipping ahead to a possible first character; these
# start with a character class, so `re` scans for it at memchr-like speed (10-30x faster on prose).
_DIGITS = tuple("0123456789")
_NECESSARY = {
    "phone": re.compile(r"[0-9]{3}[ .-][0-9]{3}"),
    "ip": re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]"),
    "credit_card": re.compile(r"[0-9](?:[ -]?[0-9]){12}"),
}
_SECRET_MARKERS = ("sk-", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xoxa-", "xoxb-", "xoxp-", "xoxr-", "AIza")
_SECRET_MARKERS_LOWER = ("api_key", "secret_key", "access_token")


def _may_hold(kind: str, text: str, digits: bool) -> bool:
    if kind == "email":
        return "@" in text
    if kind == "secret":
        return any(m in text for m in _SECRET_MARKERS) or (
            any(m in text.lower() for m in _SECRET_MARKERS_LOWER)
        )
    return digits and _NECESSARY[kind].search(text) is not None


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn(digits)


_CONFIRM: dict[str, Callable[[str], bool]] = {"credit_card": _is_card}


def scan_pii(text: str, redact: bool) -> tuple[str, dict[str, int]]:
    """(text with matches replaced by <KIND> when `redact`, matches per kind found)."""
    counts: dict[str, int] = {}
    digits = any(d in text for d in _DIGITS)  # once per document (a redaction adds none)
    for kind in ("secret", "email", "credit_card", "ip", "phone"):  # most specific first: a key may hold digits
        pattern, confirm = _PATTERNS[kind], _CONFIRM.get(kind)
        if not _may_hold(kind, text, digits) or not pattern.search(text):
            continue
        found = 0

        def replace(m: re.Match[str], kind: str = kind, confirm: Callable[[str], bool] | None = confirm) -> str:
            nonlocal found
            if confirm is not None and not confirm(m.group(0)):
                return m.group(0)
            found += 1
            if not redact:
                return m.group(0)
            prefix = m.groupdict().get("prefix") or ""
            return prefix + _REDACTION[kind]

        new_text = pattern.sub(replace, text)
        if found:
            counts[kind] = found
            if redact:
                text = new_text
    return text, counts


# For ASCII text the counts come from bytes.translate (C speed) with tables derived from the two patterns above.
_NOT_SPACE = bytes(c for c in range(128) if not _SPACE.match(chr(c)))
_NOT_SYMBOL = bytes(c for c in range(128) if not _SYMBOL.match(chr(c)))


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are neither letters nor digits."""
    if text.isascii():
        data = text.encode("ascii")
        spaces, symbols = len(data.translate(None, _NOT_SPACE)), len(data.translate(None, _NOT_SYMBOL))
    else:
        spaces, symbols = len(_SPACE.findall(text)), len(_SYMBOL.findall(text))
    visible = len(text) - spaces
    if not visible:
        return 0.0
    return symbols / visible


def repeated_line_fraction(text: str) -> float:
    """Share of non-blank lines that repeat an earlier line (Gopher's dup_line_frac)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def quality_failure(text: str, cfg: QualityConfig) -> str | None:
    """The name of the first quality rule `text` fails, or None."""
    if len(text.strip()) < cfg.min_chars:
        return "min_chars"
    if cfg.max_symbol_ratio is not None and symbol_ratio(text) > cfg.max_symbol_ratio:
        return "max_symbol_ratio"
    if cfg.max_repeated_lines is not None and repeated_line_fraction(text) > cfg.max_repeated_lines:
        return "max_repeated_lines"
    return None
