"""Failed jobs of a multirun: one error line, and a ``metrics.json`` with ``status: failed`` in the job's dir, so
the sweep goes on and the compare table lists the job."""
from __future__ import annotations

import json
import math
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from saefw.app.atomic import write_text
from saefw.errors import SaefwError

# The SAE's own outputs: NaN here means the weights diverged (ce_loss_recovered can be NaN for other reasons).
DIVERGENCE_KEYS = ("l0", "mse", "explained_variance")


def error_line(exc: BaseException) -> str:
    """One line: a SaefwError's message as is, anything else prefixed with its type."""
    text = str(exc) if isinstance(exc, SaefwError) or not str(exc) else f"{type(exc).__name__}: {exc}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines) if lines else type(exc).__name__


def check_finite(record: dict) -> None:
    """Raise a SaefwError when training diverged (NaN/inf in the SAE's own metrics)."""
    bad = [f"{k}={record[k]}" for k in DIVERGENCE_KEYS
           if isinstance(record.get(k), float) and not math.isfinite(record[k])]
    if bad:
        raise SaefwError(f"training diverged: {', '.join(bad)} (try a lower train.lr or sparsity coefficient)")


def _select(cfg, key):
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # an interpolation that cannot resolve: the record simply goes without it
        return None


def write_failed_record(job_dir: Path, exc: BaseException, cfg, overrides: list[str],
                        job_num: int | None = None) -> dict:
    """Write ``job_dir/metrics.json`` for a failed job and ``job_dir/error.txt`` with the traceback.

    Metrics the job wrote before failing (e.g. a diverged run) are kept beside ``status`` and ``error``."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    previous = {}
    try:
        previous = json.loads((job_dir / "metrics.json").read_text())
        previous.pop("history", None)
    except (OSError, ValueError):
        pass
    record = {**previous,
              **{k: v for k in ("model", "layer", "site") if (v := _select(cfg, k)) is not None},
              **{k: v for k, key in (("arch", "arch.name"), ("penalty", "penalty.name"))
                 if (v := _select(cfg, key)) is not None},
              "status": "failed", "error": error_line(exc), "overrides": list(overrides), "job_num": job_num}
    write_text(job_dir / "metrics.json", json.dumps(record, indent=2, default=str))
    write_text(job_dir / "error.txt", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return record
