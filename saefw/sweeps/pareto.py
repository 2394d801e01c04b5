"""Pareto frontiers of the sparsity / fidelity trade-off."""
from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_mask(x: Sequence[float | None], y: Sequence[float | None], maximise_y: bool = True) -> list[bool]:
    """Which points are non-dominated when minimising ``x`` and maximising ``y`` (minimising it if not
    ``maximise_y``).

    Point i is dominated iff some j has x_j ≤ x_i and y_j ≥ y_i (y_j ≤ y_i when minimising), with at least one
    strict. Identical points are all on the frontier; points with a missing or non-finite coordinate never are."""
    sign = 1.0 if maximise_y else -1.0
    pts = [(float(a), sign * float(b)) if _finite(a) and _finite(b) else None for a, b in zip(x, y)]
    mask = []
    for p in pts:
        if p is None:
            mask.append(False)
            continue
        dominated = any(q is not None and q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])
                        for q in pts)
        mask.append(not dominated)
    return mask


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
