"""The three scorers of an explanation. Each turns a feature's :class:`~saefw.interp.examples.ExampleSets` and
explanation into prompts (:class:`Task`, with the truth its answer is compared with) and the answers into a
score; both steps are pure (a seeded ``random.Random`` fixes shuffles and random marks), so a fixed set of
windows with fixed answers gives hand-checkable scores.

* ``detection``: the held-out firing windows and windows where the feature never fires, shuffled, shown
  unmarked ``batch_items`` per prompt; the model says which ones the feature is active in → accuracy/F1.
* ``fuzzing``: each held-out firing window twice, once with its active tokens marked and once with as many
  tokens marked at random (where the feature is 0), shuffled; the model says which markings are right → accuracy/F1.
* ``simulation``: one prompt per simulation window; the model predicts a 0-10 activation per token →
  correlation with the true activations over all tokens.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from saefw.errors import SaefwError
from saefw.interp import metrics, parsing, prompts
from saefw.interp.examples import ExampleSets


@dataclass
class Task:
    """One prompt: ``messages``, the answer budget ``max_tokens``, and ``truth`` (labels for detection and
    fuzzing, true activations for simulation); ``items`` names the windows shown ([context, position, kind,
    label or marks])."""

    messages: list[dict]
    max_tokens: int
    truth: list
    items: list = field(default_factory=list)


class Scorer:
    """Base class: ``tasks(sets, explanation, threshold, rng)`` then ``score(tasks, answers)``."""

    name = "?"

    def __init__(self, batch_items: int = 5):
        if batch_items < 1:
            raise SaefwError(f"batch_items={batch_items} must be at least 1")
        self.batch_items = batch_items

    def tasks(self, sets: ExampleSets, explanation: str, threshold: float, rng: random.Random) -> list[Task]:
        raise NotImplementedError

    def score(self, tasks: list[Task], answers: list[str]) -> dict:
        raise NotImplementedError

    def _batches(self, items: list) -> list[list]:
        return [items[k:k + self.batch_items] for k in range(0, len(items), self.batch_items)]


def _classification_score(tasks: list[Task], answers: list[str]) -> dict:
    labels, parsed = [], []
    for task, answer in zip(tasks, answers):
        labels += task.truth
        parsed += parsing.parse_labels(answer, len(task.truth))
    return metrics.binary_scores(labels, parsed)


class Detection(Scorer):
    name = "detection"

    def tasks(self, sets, explanation, threshold, rng):
        items = [(e, 1) for e in sets.positives] + [(e, 0) for e in sets.negatives]
        rng.shuffle(items)
        return [Task(prompts.detection_messages(explanation, [e for e, _ in batch]), 12 * len(batch) + 8,
                     [y for _, y in batch], [[*e.ref(), y] for e, y in batch]) for batch in self._batches(items)]

    def score(self, tasks, answers):
        return _classification_score(tasks, answers)


class Fuzzing(Scorer):
    name = "fuzzing"

    def tasks(self, sets, explanation, threshold, rng):
        items = []
        for e in sets.positives:
            right = prompts.active_tokens(e, threshold)
            items.append((e, right, 1))
            items.append((e, prompts.random_marks(e, len(right), right, rng), 0))
        rng.shuffle(items)
        return [Task(prompts.fuzzing_messages(explanation, [(e, m) for e, m, _ in batch]), 12 * len(batch) + 8,
                     [y for *_, y in batch], [[*e.ref(), sorted(m), y] for e, m, y in batch])
                for batch in self._batches(items)]

    def score(self, tasks, answers):
        return _classification_score(tasks, answers)


class Simulation(Scorer):
    name = "simulation"

    def tasks(self, sets, explanation, threshold, rng):
        return [Task(prompts.simulation_messages(explanation, e), 8 * len(e.tokens) + 16, list(e.acts), [e.ref()])
                for e in sets.simulation]

    def score(self, tasks, answers):
        return metrics.simulation_score([t.truth for t in tasks],
                                        [parsing.parse_activations(a, len(t.truth)) for t, a in zip(tasks, answers)])


SCORERS = {s.name: s for s in (Detection, Fuzzing, Simulation)}


def make_scorers(names, batch_items: int) -> list[Scorer]:
    out = []
    for name in names:
        if name not in SCORERS:
            raise SaefwError(f"scorers: {name!r} is not a scorer; choices: {', '.join(SCORERS)}")
        out.append(SCORERS[name](batch_items))
    return out
