"""Prompt construction for explaining a feature and for the three scorers (pure functions: fixed inputs give
fixed prompts).

Marked tokens are written ``<<like this>>`` (consecutive marked tokens share one pair of brackets); a newline
token is shown as ``↵`` so every excerpt is one line.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from saefw.interp.examples import Example

SYSTEM = ("You are an interpretability researcher. You study one feature of a language model at a time: a "
          "unit that becomes active on some tokens of a text. You answer briefly and exactly in the format asked.")


def show(token: str) -> str:
    return token.replace("\r", "").replace("\n", "↵")


def render(tokens: Sequence[str], marked: set[int] | frozenset[int] = frozenset()) -> str:
    """The tokens joined into text, the ``marked`` indices inside ``<<`` ``>>``."""
    out, inside = [], False
    for i, tok in enumerate(tokens):
        if i in marked and not inside:
            out.append("<<")
            inside = True
        elif i not in marked and inside:
            out.append(">>")
            inside = False
        out.append(show(tok))
    if inside:
        out.append(">>")
    return "".join(out).strip()


def active_tokens(example: Example, threshold: float) -> set[int]:
    """The tokens an explanation is about: activation ≥ ``threshold`` (and > 0), always including the max."""
    marked = {i for i, a in enumerate(example.acts) if a > 0 and a >= threshold}
    if example.max_act > 0:
        marked.add(max(range(len(example.acts)), key=lambda i: example.acts[i]))
    return marked


def random_marks(example: Example, n: int, avoid: set[int], rng: random.Random) -> set[int]:
    """``n`` token indices marked at random for fuzzing, drawn from the tokens where the feature is 0 (then from
    the other tokens not in ``avoid`` if there are too few)."""
    quiet = [i for i, a in enumerate(example.acts) if a <= 0 and i not in avoid]
    rest = [i for i in range(len(example.acts)) if i not in avoid and i not in quiet]
    rng.shuffle(quiet)
    rng.shuffle(rest)
    return set((quiet + rest)[:n])


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def explanation_messages(examples: Sequence[Example], threshold: float) -> list[dict]:
    """Ask for a one-sentence explanation of what the marked tokens of ``examples`` have in common."""
    lines = [f"Example {k}: {render(e.tokens, active_tokens(e, threshold))}" for k, e in enumerate(examples, 1)]
    return _messages(
        "Here are text excerpts where the feature is active, the strongest first. In each, the tokens where it is "
        "most active are marked <<like this>>.\n\n" + "\n".join(lines) + "\n\n"
        "What do the marked tokens have in common (a word, a topic, a grammatical role, what comes before "
        "them)? Describe what the feature detects in one short sentence. Reply with one line that starts "
        "with \"Explanation:\".")


def _excerpts(n: int) -> str:
    return f"{n} text excerpt" + ("" if n == 1 else "s")


def _lines(n: int) -> str:
    return "exactly 1 line" if n == 1 else f"exactly {n} lines, one per excerpt,"


def _numbered(texts: Sequence[str]) -> str:
    return "\n".join(f"Excerpt {k}: {t}" for k, t in enumerate(texts, 1))


def detection_messages(explanation: str, examples: Sequence[Example]) -> list[dict]:
    """Detection: which of the (unmarked) excerpts contain a token the feature is active on?"""
    n = len(examples)
    return _messages(
        f"A feature of a language model is explained as: \"{explanation}\"\n\n"
        f"Here {'is' if n == 1 else 'are'} {_excerpts(n)}. The feature may be active in some of them and inactive in "
        f"the others.\n\n"
        + _numbered([render(e.tokens) for e in examples]) + "\n\n"
        f"According to the explanation, is the feature active in each excerpt? Reply with {_lines(n)} in the "
        f"form \"Excerpt 1: 1\" if it is active and \"Excerpt 1: 0\" if it is not.")


def fuzzing_messages(explanation: str, items: Sequence[tuple[Example, set[int]]]) -> list[dict]:
    """Fuzzing: in which excerpts are the marked tokens the ones the explanation describes?"""
    n = len(items)
    return _messages(
        f"A feature of a language model is explained as: \"{explanation}\"\n\n"
        f"Here {'is' if n == 1 else 'are'} {_excerpts(n)} with some tokens marked <<like this>>. In some excerpts "
        f"the marked tokens are where the feature is active; in the others they were marked at random.\n\n"
        + _numbered([render(e.tokens, marks) for e, marks in items]) + "\n\n"
        f"According to the explanation, are the marked tokens the right ones? Reply with {_lines(n)} in the "
        f"form \"Excerpt 1: 1\" if they are and \"Excerpt 1: 0\" if they are not.")


def simulation_messages(explanation: str, example: Example) -> list[dict]:
    """Simulation: predict the feature's activation (0-10) on every token of one excerpt."""
    n = len(example.tokens)
    lines = "\n".join(f"{k}: {show(t)!r}" for k, t in enumerate(example.tokens, 1))
    return _messages(
        f"A feature of a language model is explained as: \"{explanation}\"\n\n"
        f"Here is a text excerpt, one token per line, numbered:\n\n{lines}\n\n"
        f"Predict the feature's activation on each token, from 0 (inactive) to 10 (most active); most tokens "
        f"are 0. Reply with exactly {n} lines in the form \"<token number>: <activation>\", e.g. \"1: 0\".")
