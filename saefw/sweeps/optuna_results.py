"""The result of a Hydra Optuna sweep (``optimization_results.yaml`` in the sweep dir), matched to its jobs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

RESULTS_FILE = "optimization_results.yaml"


@dataclass
class OptunaResult:
    """The study's best trial (one objective) or its Pareto set (several), as parameter dicts with their values."""

    sweep_dir: Path
    multi_objective: bool
    solutions: list[dict]  # each {"params": {...}, "values": [...]}

    def describe(self, jobs_by_solution: list[list[str]]) -> list[str]:
        """Printable lines: each solution with its objective values and the jobs that ran it."""
        n = len(self.solutions)
        head = (f"Optuna Pareto set ({n} trial{'' if n == 1 else 's'})" if self.multi_objective
                else "Optuna best trial") + f" in {self.sweep_dir}:"
        lines = [head]
        for sol, names in zip(self.solutions, jobs_by_solution):
            params = " ".join(f"{k}={v}" for k, v in sol["params"].items())
            values = ", ".join(f"{v:.4g}" for v in sol["values"])
            lines.append(f"  {', '.join(names) or '(no job dir found)'}: {params} -> {values}")
        return lines


def read_optuna_result(sweep_dir: Path) -> OptunaResult | None:
    """The parsed ``optimization_results.yaml`` of ``sweep_dir``, or None where there is none (or it is not
    Optuna's)."""
    path = Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    if data.get("name") != "optuna":
        return None
    if "solutions" in data:
        sols = [{"params": dict(s.get("params") or {}), "values": [float(v) for v in s.get("values") or []]}
                for s in data["solutions"] or []]
        return OptunaResult(Path(sweep_dir), True, sols)
    if "best_params" in data:
        return OptunaResult(Path(sweep_dir), False,
                            [{"params": dict(data["best_params"] or {}), "values": [float(data["best_value"])]}])
    return None


def params_match(params: dict, overrides: dict[str, str]) -> bool:
    """Whether a job ran with these trial parameters (floats compared numerically: Optuna writes them with
    ``str``, which round-trips)."""
    for key, value in params.items():
        given = overrides.get(key)
        if given is None:
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                if not math.isclose(float(given), float(value), rel_tol=1e-9, abs_tol=0.0):
                    return False
            except ValueError:
                return False
        elif str(value) != given:
            return False
    return True
