"""The score equations against hand computations."""
import math

import pytest

from saefw.interp.metrics import binary_scores, pearson, simulation_score


def test_binary_scores_by_hand():
    # answers → predictions [1, 0 (unparsed), 1, 0, 0]: tp = 1 (#0), fn = 2 (#1, #4), fp = 1 (#2), tn = 1 (#3)
    s = binary_scores([1, 1, 0, 0, 1], [1, None, 1, 0, 0])
    assert (s["tp"], s["fn"], s["fp"], s["tn"], s["n"], s["unparsed"]) == (1, 2, 1, 1, 5, 1)
    assert s["accuracy"] == pytest.approx(2 / 5)
    assert s["precision"] == pytest.approx(1 / 2)
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))  # = 0.4
    none = binary_scores([1, 0], [0, 0])  # never says "active": precision and F1 are 0, not NaN
    assert (none["accuracy"], none["precision"], none["recall"], none["f1"]) == (0.5, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        binary_scores([1], [1, 0])


def test_pearson_and_simulation_score_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) is None
    # true [0, 5, 1 | 0, 0, 0], predicted [0, 10, 0 | 0, 0, 3]: mean a = 1, mean p = 13/6;
    # Σ(a−ā)(p−p̄) = 37, Σ(a−ā)² = 20, Σ(p−p̄)² = 109 − 6·(13/6)² = 485/6
    s = simulation_score([[0, 5, 1], [0, 0, 0]], [[0, 10, None], [0, 0, 3]])
    assert s["correlation"] == pytest.approx(37 / math.sqrt(20 * 485 / 6))  # ≈ 0.9202
    assert (s["n_tokens"], s["unparsed"], s["constant"]) == (6, 1, False)
    flat = simulation_score([[0, 5, 1]], [[None, None, None]])
    assert (flat["correlation"], flat["constant"], flat["unparsed"]) == (0.0, True, 3)
