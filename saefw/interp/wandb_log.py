"""The explain command's W&B run (job_type ``explain``): the explanations and scores as a ``wandb.Table``, mean
scores and the explainer's token count in the summary. Offline by default (``wandb sync`` uploads it later);
never a login prompt."""
from __future__ import annotations

import os
from pathlib import Path

from saefw.app.wandb_settings import WandbSettings
from saefw.interp.results import CSV_COLUMNS, flat_row


def log_explanations(results: dict, features: list[int], out_dir: Path, settings: WandbSettings, usage: dict,
                     explainer: dict) -> Path | None:
    """Log the rows of ``features``; returns the local run dir (None when ``settings.mode`` is disabled)."""
    settings.check_mode()
    if settings.mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    if settings.mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # never a login prompt
    import wandb

    rows = [flat_row(results["features"][str(f)]) for f in features]
    run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group, job_type="explain",
                     name=f"explain-{Path(results['run']).name}", dir=str(out_dir), mode=settings.mode,
                     reinit="create_new", config={"run": results["run"], "explainer": explainer,
                                                  "features": features})
    try:
        table = wandb.Table(columns=list(CSV_COLUMNS), data=[[r[c] for c in CSV_COLUMNS] for r in rows],
                            allow_mixed_types=True)
        run.log({"explanations": table})
        summary = {f"usage/{k}": v for k, v in usage.items() if v is not None}
        for col in CSV_COLUMNS[2:7]:
            vals = [r[col] for r in rows if r[col] is not None]
            if vals:
                summary[f"mean/{col}"] = sum(vals) / len(vals)
        run.summary.update(summary)
        return Path(run.dir).parent
    finally:
        run.finish()
