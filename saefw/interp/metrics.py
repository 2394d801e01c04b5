"""The scores (pure functions).

Detection and fuzzing are binary classifications: with true labels y and answers ŷ (an unparsed answer counts as
0, the negative), tp = #{y = 1, ŷ = 1}, fp = #{y = 0, ŷ = 1}, fn = #{y = 1, ŷ = 0}, tn = #{y = 0, ŷ = 0};
accuracy = (tp + tn) / n, precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2tp / (2tp + fp + fn)
(0 where a denominator is 0).

Simulation (OpenAI's automated interpretability, "all at once" scoring): the Pearson correlation
r = Σ(a − ā)(p − p̄) / √(Σ(a − ā)² Σ(p − p̄)²) between the true activations a and the predicted ones p over every
token of every simulated excerpt (an unparsed prediction counts as 0). r is scale-free, so predictions on a
0-10 scale compare directly with raw activations. A constant prediction carries no information: r = 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def binary_scores(labels: Sequence[int], answers: Sequence[int | None]) -> dict:
    """accuracy, precision, recall, f1 and the counts (see the module docstring)."""
    if len(labels) != len(answers):
        raise ValueError(f"{len(labels)} labels for {len(answers)} answers")
    pred = [1 if a == 1 else 0 for a in answers]
    tp = sum(1 for y, p in zip(labels, pred) if y == 1 and p == 1)
    fp = sum(1 for y, p in zip(labels, pred) if y == 0 and p == 1)
    fn = sum(1 for y, p in zip(labels, pred) if y == 1 and p == 0)
    tn = len(labels) - tp - fp - fn
    n = len(labels)

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    return {"accuracy": ratio(tp + tn, n), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": n,
            "unparsed": sum(1 for a in answers if a is None)}


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """The Pearson correlation of x and y; None when either is constant (or empty)."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"{n} values against {len(y)}")
    if n == 0:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def simulation_score(true_acts: Sequence[Sequence[float]], predicted: Sequence[Sequence[float | None]]) -> dict:
    """``correlation`` over all tokens of all excerpts (0 when the prediction or the truth is constant, with
    ``constant`` set), ``n_tokens`` and ``unparsed`` (tokens without a prediction, counted as 0)."""
    a = [float(v) for row in true_acts for v in row]
    p = [0.0 if v is None else float(v) for row in predicted for v in row]
    r = pearson(a, p)
    return {"correlation": 0.0 if r is None else r, "constant": r is None, "n_tokens": len(a),
            "unparsed": sum(1 for row in predicted for v in row if v is None)}
