"""Answer parsing: the asked format and the common variants small models produce."""
import pytest

from saefw.interp.parsing import parse_activations, parse_explanation, parse_labels


@pytest.mark.parametrize("answer, want", [
    ("Explanation: The feature fires on country names. It also...", "The feature fires on country names."),
    ("Sure!\n**Explanation:** \"dates and years\"\nmore text", "dates and years"),
    ("  the word 'the' after a comma  ", "the word 'the' after a comma"),
    ("", ""),
])
def test_parse_explanation(answer, want):
    assert parse_explanation(answer) == want


def test_parse_explanation_caps_the_length():
    assert len(parse_explanation("Explanation: " + "word " * 200)) <= 300


@pytest.mark.parametrize("answer, n, want", [
    ("Excerpt 1: 1\nExcerpt 2: 0\nExcerpt 3: 1", 3, [1, 0, 1]),
    ("Excerpt 2: yes\nExcerpt 1: No", 3, [0, 1, None]),  # out of order, one missing
    ("Example 1 is active. Example 2 is inactive.", 2, [1, 0]),
    ("Excerpt 1: **1**\nExcerpt 1: 0\nExcerpt 9: 1", 2, [1, None]),  # the first answer counts; 9 is out of range
    ("My answers: [1, 0, 0, 1]", 4, [1, 0, 0, 1]),
    ("1 0 1", 3, [1, 0, 1]),
    ("1 0", 3, [None, None, None]),  # bare answers only when exactly n
    ("I cannot tell.", 2, [None, None]),
])
def test_parse_labels(answer, n, want):
    assert parse_labels(answer, n) == want


def test_parse_activations():
    answer = "1: 0\n2: 10\n3: 'sat': 4.5\n4: 12\n2: 3\nnot a line\n7: 1"
    assert parse_activations(answer, 5) == [0.0, 10.0, 4.5, 10.0, None]  # 12 clipped to 10; 7 > n ignored
    assert parse_activations("nothing", 2) == [None, None]
