"""Standard errors over independent units (held-out contexts), for comparing runs.

Tokens of one context are correlated, so the unit is the context, not the token: a metric that is a ratio of
sums over contexts, R = Σ_c a_c / Σ_c b_c, gets the delta-method (linearisation) standard error

    SE(R) = sqrt( Σ_c (a_c − R·b_c)² / (n(n−1)) ) / |b̄|,     b̄ = Σ_c b_c / n,

and a mean of per-context values d_c gets SE = std(d_c) / √n (sample standard deviation, n − 1)."""
from __future__ import annotations

import math

import numpy as np


def ratio_se(a, b) -> float:
    """SE of Σa / Σb over n independent units (NaN with fewer than two)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = len(a)
    if n < 2 or b.sum() == 0:
        return math.nan
    r = a.sum() / b.sum()
    return float(math.sqrt(((a - r * b) ** 2).sum() / (n * (n - 1))) / abs(b.sum() / n))


def mean_se(d) -> float:
    """SE of the mean of n independent values (NaN with fewer than two)."""
    d = np.asarray(d, np.float64)
    return float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
