"""The compare step's own W&B run (job_type ``compare``, in the sweep's group): the trade-off table as a
``wandb.Table``, the figure as an image, and an L0 / CE-loss-recovered scatter of the finished jobs."""
from __future__ import annotations

import math
import os
from pathlib import Path

from saefw.app.wandb_settings import WandbSettings, effective_mode
from saefw.sweeps.tradeoff import Tradeoff, frontier_metric, number


def _cell(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def log_compare_run(table: Tradeoff, out_dir: Path, settings: WandbSettings, group: str,
                    png: Path | None) -> Path | None:
    """Log the table and figure; returns the local run dir (None when W&B is disabled)."""
    settings.check_mode()
    mode = effective_mode(settings.mode)  # online without a key or a network: offline, never a login prompt
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # never a login prompt
    import wandb

    out_dir = Path(out_dir)
    run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group or group,
                     job_type="compare", name=f"compare-{settings.group or group}", dir=str(out_dir),
                     mode=mode, reinit="create_new",
                     config={"jobs": len(table.rows), "failed": len(table.failed_rows()),
                             "sweeps": sorted({r["sweep"] for r in table.rows})})
    try:
        data = [[_cell(r.get(c)) for c in table.columns] for r in table.rows]
        logged = {"tradeoff/table": wandb.Table(columns=table.columns, data=data, allow_mixed_types=True)}
        metric = frontier_metric(table.ok_rows())
        points = [[r["group"], number(r, "l0"), number(r, metric), bool(r["frontier"]), r["job"]]
                  for r in table.ok_rows() if number(r, "l0") is not None and number(r, metric) is not None]
        if points:
            scatter = wandb.Table(columns=["group", "l0", metric, "frontier", "job"], data=points)
            logged["tradeoff/frontier"] = wandb.plot.scatter(scatter, "l0", metric,
                                                             title=f"{metric} vs L0 (all archs)")
        if png is not None:
            logged["tradeoff/plot"] = wandb.Image(str(png), caption="trade-off frontiers")
        run.log(logged)
        run.summary.update({"jobs": len(table.rows), "failed_jobs": len(table.failed_rows())})
        return Path(run.dir).parent
    finally:
        run.finish()
