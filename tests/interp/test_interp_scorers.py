"""The three scorers on a fixed set of windows with fixed answers, against hand-computed scores."""
import math
import random

import pytest
from interp_helpers import E1, E2, N1, N2, SETS, THRESHOLD

from saefw.errors import SaefwError
from saefw.interp.scorers import Detection, Fuzzing, Simulation, make_scorers


def test_detection_on_fixed_answers():
    tasks = Detection(batch_items=3).tasks(SETS, "cats", THRESHOLD, random.Random(0))
    # the seeded shuffle puts N1, E1, E2 in the first prompt and N2 in the second
    assert [t.truth for t in tasks] == [[0, 1, 1], [0]]
    assert [t.items for t in tasks] == [[[*N1.ref(), 0], [*E1.ref(), 1], [*E2.ref(), 1]], [[*N2.ref(), 0]]]
    assert "Excerpt 1: It is red\nExcerpt 2: The cat sat\nExcerpt 3: A dog ran" in tasks[0].messages[1]["content"]
    # answers: N1 → 1 (fp), E1 → 1 (tp), E2 → unparsed (fn); N2 → 0 (tn)
    s = Detection().score(tasks, ["Excerpt 1: 1\nExcerpt 2: 1", "[0]"])
    assert (s["tp"], s["fp"], s["fn"], s["tn"], s["unparsed"]) == (1, 1, 1, 1, 1)
    assert s["accuracy"] == pytest.approx(2 / 4) and s["f1"] == pytest.approx(2 / (2 + 1 + 1))
    perfect = Detection().score(tasks, ["Excerpt 1: 0\nExcerpt 2: 1\nExcerpt 3: 1", "Excerpt 1: 0"])
    assert (perfect["accuracy"], perfect["f1"]) == (1.0, 1.0)


def test_fuzzing_on_fixed_answers():
    tasks = Fuzzing(batch_items=3).tasks(SETS, "cats", THRESHOLD, random.Random(0))
    # each positive twice: its active token marked (label 1) and one quiet token marked at random (label 0)
    assert [t.items for t in tasks] == [[[*E2.ref(), [2], 1], [*E1.ref(), [1], 1], [*E1.ref(), [0], 0]],
                                        [[*E2.ref(), [1], 0]]]
    text = tasks[0].messages[1]["content"]
    assert "Excerpt 1: A dog<< ran>>\nExcerpt 2: The<< cat>> sat\nExcerpt 3: <<The>> cat sat" in text
    assert "Excerpt 1: A<< dog>> ran" in tasks[1].messages[1]["content"]
    # answers: 1, 0, 0 | 1 → tp = 1 (E2 right), fn = 1 (E1 right said 0), tn = 1 (E1 random), fp = 1 (E2 random)
    s = Fuzzing().score(tasks, ["Excerpt 1: 1\nExcerpt 2: 0\nExcerpt 3: 0", "Excerpt 1: 1"])
    assert (s["tp"], s["fn"], s["tn"], s["fp"]) == (1, 1, 1, 1)
    assert s["accuracy"] == 0.5 and s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == 0.5


def test_simulation_on_fixed_answers():
    tasks = Simulation().tasks(SETS, "cats", THRESHOLD, random.Random(0))
    assert [t.truth for t in tasks] == [[0.0, 5.0, 1.0], [0.0, 0.0, 0.0]]  # E1, then N1
    assert "1: 'The'\n2: ' cat'\n3: ' sat'" in tasks[0].messages[1]["content"]
    s = Simulation().score(tasks, ["1: 0\n2: 10\n3: 0", "1: 0\n2: 0\n3: 3"])
    # predicted [0, 10, 0, 0, 0, 3] against true [0, 5, 1, 0, 0, 0]: r = 37 / √(20 · 485/6) (see test_interp_metrics)
    assert s["correlation"] == pytest.approx(37 / math.sqrt(20 * 485 / 6))
    assert s["n_tokens"] == 6 and s["unparsed"] == 0


def test_unknown_scorer_is_a_clear_error():
    assert [s.name for s in make_scorers(["fuzzing", "detection"], 4)] == ["fuzzing", "detection"]
    with pytest.raises(SaefwError, match="'guessing' is not a scorer; choices: detection, fuzzing, simulation"):
        make_scorers(["guessing"], 4)
