"""Prompt construction on fixed windows."""
import random

from interp_helpers import E1, E2, THRESHOLD

from saefw.interp.examples import Example
from saefw.interp.prompts import (
    SYSTEM,
    active_tokens,
    detection_messages,
    explanation_messages,
    random_marks,
    render,
    simulation_messages,
)


def test_render_marks_runs_of_tokens_once_and_shows_newlines():
    assert render(["a", " b", " c", " d"], {1, 2}) == "a<< b c>> d"
    assert render(["x", "\n", "y"], {2}) == "x↵<<y>>"
    assert render(["a", " b"], {0, 1}) == "<<a b>>"


def test_active_and_random_marks():
    assert active_tokens(E1, THRESHOLD) == {1}
    assert active_tokens(E1, 100.0) == {1}  # the max token is always marked
    assert active_tokens(E1, 0.5) == {1, 2}
    # random marks come from the tokens where the feature is 0: only "The" for E1, only " dog" for E2
    assert random_marks(E1, 1, {1}, random.Random(0)) == {0}
    assert random_marks(E2, 1, {2}, random.Random(0)) == {1}
    # too few quiet tokens: the others not already marked fill up
    assert random_marks(E2, 2, {2}, random.Random(0)) == {0, 1}


def test_explanation_prompt_shows_marked_examples():
    messages = explanation_messages([E1, E2], THRESHOLD)
    assert messages[0] == {"role": "system", "content": SYSTEM}
    text = messages[1]["content"]
    assert "Example 1: The<< cat>> sat\nExample 2: A dog<< ran>>\n" in text
    assert 'starts with "Explanation:"' in text


def test_detection_and_simulation_prompts():
    text = detection_messages("cats", [E1, E2])[1]["content"]
    assert text.startswith('A feature of a language model is explained as: "cats"')
    assert "Excerpt 1: The cat sat\nExcerpt 2: A dog ran" in text and "<<" not in text.split("\n\n")[2]
    assert "Reply with exactly 2 lines, one per excerpt," in text
    assert "Reply with exactly 1 line in the form" in detection_messages("cats", [E1])[1]["content"]
    sim = simulation_messages("cats", Example(("a", "\n"), (0.0, 1.0), 0, 1, "top"))[1]["content"]
    assert "1: 'a'\n2: '↵'" in sim and "Reply with exactly 2 lines" in sim
