"""Parsing the explainer's answers (pure functions). Small models rarely follow a format exactly, so each parser
accepts the format asked for and a few common variants, and says ``None`` for what it cannot find; the metrics
count a ``None`` as the negative answer and report how many there were."""
from __future__ import annotations

import re

_EXPLANATION = re.compile(r"explanation\s*[:\-]\s*(.+)", re.IGNORECASE | re.DOTALL)
_ITEM = re.compile(r"(?:excerpt|example)\s*#?\s*(\d+)\s*(?:[:=)\-]|is)\s*\**\s*(1|0|yes|no|true|false|active|inactive)\b",
                   re.IGNORECASE)
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_BARE = re.compile(r"(?<![\w.])(1|0|yes|no|true|false)(?![\w.])", re.IGNORECASE)
_ACT_LINE = re.compile(r"^\W*(\d+)\b[^\n]*?[:=\t\-]\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*$", re.MULTILINE)
_TRUE = {"1", "yes", "true", "active"}
MAX_EXPLANATION_CHARS = 300


def parse_explanation(text: str) -> str:
    """The explanation sentence: what follows ``Explanation:`` (else the whole answer), its first non-empty line,
    without quotes or markdown emphasis, cut to one sentence of at most 300 characters. Empty if nothing is left."""
    m = _EXPLANATION.search(text)
    body = m.group(1) if m else text
    line = next((ln.strip() for ln in body.splitlines() if ln.strip()), "")
    line = line.strip("*_`\"' ").strip()
    end = re.search(r"(?<=[.!?])\s", line)
    if end:
        line = line[: end.start()]
    return line[:MAX_EXPLANATION_CHARS].strip()


def _bit(word: str) -> int:
    return 1 if word.lower() in _TRUE else 0


def parse_labels(text: str, n: int) -> list[int | None]:
    """n answers 1/0 from ``Excerpt k: 1`` lines (k = 1..n); failing any such line, from a bracketed list of
    exactly n values (``[1, 0, 1]``), then from exactly n bare 1/0/yes/no words. Missing answers are None."""
    found = {}
    for k, word in _ITEM.findall(text):
        k = int(k)
        if 1 <= k <= n and k not in found:
            found[k] = _bit(word)
    if found:
        return [found.get(k) for k in range(1, n + 1)]
    for inside in _BRACKETS.findall(text):
        words = _BARE.findall(inside)
        if len(words) == n:
            return [_bit(w) for w in words]
    words = _BARE.findall(text)
    if len(words) == n:
        return [_bit(w) for w in words]
    return [None] * n


def parse_activations(text: str, n: int) -> list[float | None]:
    """Predicted activations of tokens 1..n from ``<k>: <value>`` lines (values clipped to 0-10; the first
    line for each k counts). Tokens without a line are None."""
    found: dict[int, float] = {}
    for k, v in _ACT_LINE.findall(text):
        k = int(k)
        if 1 <= k <= n and k not in found:
            found[k] = min(max(float(v), 0.0), 10.0)
    return [found.get(k) for k in range(1, n + 1)]
