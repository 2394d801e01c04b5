"""The trade-off table: one row per job with its identity, overrides, status and metrics, grouped by arch, with
the Pareto frontier of each group (minimise l0, maximise ce_loss_recovered) and Optuna's best trials marked."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from saefw.sweeps.jobs import Job
from saefw.sweeps.optuna_results import OptunaResult, params_match, read_optuna_result
from saefw.sweeps.pareto import pareto_mask

HEADLINE = ("l0", "ce_loss_recovered", "explained_variance", "ce_delta", "kl_div", "dead_fraction", "shrinkage",
            "mse", "mmcs", "absorption_rate", "absorption_fraction", "sparse_probing_llm_acc",
            "sparse_probing_sae_top_1_acc", "sparse_probing_sae_top_5_acc")
IDENTITY = ("arch", "penalty", "layer", "site", "model", "d_in", "d_sae", "seed")
TAIL = ("steps", "tokens", "wall_seconds", "error", "run_dir")
# record keys that are bookkeeping, not metrics
_NOT_METRICS = {*IDENTITY, *TAIL, "status", "overrides", "job_num", "history"}
# identity keys that split one arch into several plot lines when they vary across the compared jobs
_SPLIT = ("model", "layer", "site")


@dataclass
class Tradeoff:
    """The compare table: ``rows`` (dicts keyed by ``columns``), the arch groups, and the Optuna results found."""

    columns: list[str]
    rows: list[dict]
    groups: list[str]
    override_keys: list[str]
    optuna: list[tuple[OptunaResult, list[list[str]]]] = field(default_factory=list)

    def ok_rows(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "ok"]

    def failed_rows(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    @property
    def sites(self) -> set[str]:
        return {str(r["site"]) for r in self.rows if r.get("site") is not None}


def number(row: dict, key: str) -> float | None:
    """``row[key]`` as a finite float, else None."""
    v = row.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def frontier_metric(rows: list[dict]) -> str:
    """ce_loss_recovered where the runs have it; explained_variance otherwise (e.g. synthetic sources)."""
    return "ce_loss_recovered" if any(number(r, "ce_loss_recovered") is not None for r in rows) \
        else "explained_variance"


def _group_labels(jobs: list[Job]) -> list[str]:
    varying = [k for k in _SPLIT if len({repr(j.record.get(k)) for j in jobs}) > 1]
    labels = []
    for j in jobs:
        parts = [str(j.record.get("arch", "?"))]
        for k in varying:
            v = j.record.get(k)
            parts.append(f"L{v}" if k == "layer" else str(v))
        labels.append(" ".join(parts))
    return labels


def _metric_columns(records: list[dict]) -> list[str]:
    present = {k for r in records for k, v in r.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_METRICS}
    cols = []
    for m in HEADLINE:
        if m in present:
            cols.append(m)
            if f"{m}_se" in present:
                cols.append(f"{m}_se")
    rest = sorted(present - set(cols) - {"steps", "tokens", "wall_seconds"})
    return cols + rest


def build_tradeoff(jobs: list[Job]) -> Tradeoff:
    """Assemble the table from the jobs; frontiers are computed within each group over the ok jobs only."""
    groups = _group_labels(jobs)
    override_keys: list[str] = []
    for j in jobs:
        for k in j.override_map():
            if k not in override_keys and k not in IDENTITY:
                override_keys.append(k)
    metric_cols = _metric_columns([j.record for j in jobs])
    columns = ["sweep", "job", "status", "group", *IDENTITY, *override_keys, "overrides", "frontier",
               "optuna_best", *metric_cols, *TAIL]
    rows = []
    for j, g in zip(jobs, groups):
        ov = j.override_map()
        row = {"sweep": j.sweep, "job": j.name, "status": j.status, "group": g,
               **{k: j.record.get(k) for k in IDENTITY}, **{k: ov.get(k) for k in override_keys},
               "overrides": " ".join(j.overrides), "frontier": False, "optuna_best": False,
               **{k: j.record.get(k) for k in metric_cols}, "steps": j.record.get("steps"),
               "tokens": j.record.get("tokens"), "wall_seconds": j.record.get("wall_seconds"),
               "error": j.record.get("error"), "run_dir": str(j.run_dir)}
        rows.append(row)
    _mark_frontiers(rows)
    optuna = _mark_optuna(jobs, rows)
    return Tradeoff(columns=columns, rows=rows, groups=list(dict.fromkeys(groups)), override_keys=override_keys,
                    optuna=optuna)


def _mark_frontiers(rows: list[dict]) -> None:
    for g in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == g and r["status"] == "ok"]
        metric = frontier_metric(members)
        mask = pareto_mask([number(r, "l0") for r in members], [number(r, metric) for r in members])
        for r, on in zip(members, mask):
            r["frontier"] = on


def _mark_optuna(jobs: list[Job], rows: list[dict]) -> list[tuple[OptunaResult, list[list[str]]]]:
    found = []
    for sweep_dir in dict.fromkeys(j.sweep_dir for j in jobs):
        result = read_optuna_result(sweep_dir)
        if result is None:
            continue
        names_per_solution = []
        for sol in result.solutions:
            names = []
            for j, row in zip(jobs, rows):
                if j.sweep_dir == sweep_dir and j.status == "ok" and params_match(sol["params"], j.override_map()):
                    row["optuna_best"] = True
                    names.append(j.name)
            names_per_solution.append(names)
        found.append((result, names_per_solution))
    return found
