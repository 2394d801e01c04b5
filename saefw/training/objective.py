"""What a training job returns to a Hydra sweeper: the ``objective`` config key.

Hydra's Optuna sweeper optimises the task's return value, so a run can hand back chosen metrics:

- ``objective: null`` (default): the task returns its whole metrics record (grid sweeps need nothing else);
- ``objective: l0`` or ``objective: [l0]``: one float, ``objective: [l0, ce_loss_recovered]``: a list of floats in
  that order (a multi-objective study: give ``hydra.sweeper.direction`` in the same order);
- ``objective: {metrics: [l0], targets: {l0: 32}}``: a metric with a target returns the distance
  ``|value − target|`` instead, e.g. to search the λ that gives L0 = 32 (``objective.targets.l0=16`` changes it).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from saefw.errors import SaefwError

FORMS = "null, a metric name, a list of metric names, or {metrics: [...], targets: {metric: value}}"


@dataclass(frozen=True)
class Objective:
    """Metric names in return order, and the targets of those scored as a distance."""

    metrics: tuple[str, ...]
    targets: dict[str, float] = field(default_factory=dict)

    def values(self, record: Mapping) -> float | list[float]:
        """``record[m]`` for each metric (``|record[m] − target|`` where a target is set); one metric → a float."""
        out = []
        for m in self.metrics:
            v = record.get(m)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                available = sorted(k for k, x in record.items()
                                   if isinstance(x, (int, float)) and not isinstance(x, bool))
                raise SaefwError(f"objective metric {m!r} is not in this run's metrics; available: "
                                 f"{', '.join(available)}")
            v = float(v)
            out.append(abs(v - self.targets[m]) if m in self.targets else v)
        return out[0] if len(out) == 1 else out


def parse_objective(spec) -> Objective | None:
    """Validate the ``objective`` config value (before training, so a typo costs nothing)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"metrics": [spec]}
    elif isinstance(spec, Sequence):
        spec = {"metrics": list(spec)}
    if not isinstance(spec, Mapping):
        raise SaefwError(f"objective={spec!r} is invalid; valid forms: {FORMS}")
    unknown = set(spec) - {"metrics", "targets"}
    if unknown:
        raise SaefwError(f"objective has unknown keys {sorted(unknown)}; valid keys: metrics, targets")
    metrics = spec.get("metrics")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
    if not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise SaefwError(f"objective.metrics={metrics!r} must be one or more metric names (e.g. [l0])")
    targets = dict(spec.get("targets") or {})
    for name, value in targets.items():
        if name not in metrics:
            raise SaefwError(f"objective.targets.{name} names no metric in objective.metrics={metrics}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SaefwError(f"objective.targets.{name}={value!r} must be a finite number")
    return Objective(tuple(metrics), {k: float(v) for k, v in targets.items()})
