"""Pareto frontier logic against hand-made tables."""
import math

from saefw.sweeps.pareto import pareto_mask


def test_minimise_l0_maximise_ce_by_hand():
    # (l0, ce_loss_recovered):     A        B        C        D        E        F
    l0 = [10.0, 20.0, 20.0, 40.0, 5.0, 80.0]
    ce = [0.80, 0.90, 0.85, 0.89, 0.60, 0.95]
    # C is dominated by B (same L0, lower CE); D by B (more L0, lower CE); the rest trade off
    assert pareto_mask(l0, ce) == [True, True, False, False, True, True]


def test_ties_missing_values_and_minimised_y():
    # identical points both stay; a NaN or None point is never on the frontier and dominates nothing
    assert pareto_mask([1.0, 1.0, 2.0], [0.5, 0.5, 0.4]) == [True, True, False]
    assert pareto_mask([1.0, None, 3.0, 0.5], [0.5, 0.9, math.nan, 0.1]) == [True, False, False, True]
    # for ce_delta / kl_div both are minimised: (10, 0.2) dominates (20, 0.3) but not (5, 0.4)
    assert pareto_mask([10.0, 20.0, 5.0], [0.2, 0.3, 0.4], maximise_y=False) == [True, False, True]


def test_brute_force_definition_on_random_points():
    import random

    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.choice([1, 2, 3, 4, 5]), rng.choice([0.1, 0.2, 0.3, 0.4])) for _ in range(8)]
        mask = pareto_mask([p[0] for p in pts], [p[1] for p in pts])
        for p, on in zip(pts, mask):
            dominated = any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts)
            assert on == (not dominated)
