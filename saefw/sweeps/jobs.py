"""Finding the jobs to compare: every ``metrics.json`` under the given sweep or run directories."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from saefw.errors import SaefwError

# folders inside a run dir that never hold a job of their own
_SKIP = {"wandb", "checkpoints", "csv", ".hydra"}


@dataclass
class Job:
    """One job's record: its ``metrics.json`` (without the per-eval history) and its Hydra overrides."""

    run_dir: Path
    record: dict
    overrides: list[str] = field(default_factory=list)
    num: int | None = None

    @property
    def status(self) -> str:
        """``ok`` unless the job recorded otherwise (run.py writes no status; a failed job writes ``failed``; a
        run stopped by Ctrl-C is ``interrupted``, its metrics those of its last evaluation)."""
        if self.record.get("status"):
            return str(self.record["status"])
        return "interrupted" if self.record.get("interrupted") is True else "ok"

    @property
    def sweep_dir(self) -> Path:
        return self.run_dir.parent

    @property
    def sweep(self) -> str:
        """The folder holding the job, by its last two path parts (``<date>/<time>`` for a Hydra sweep)."""
        return "/".join(self.sweep_dir.parts[-2:])

    @property
    def name(self) -> str:
        return self.run_dir.name

    def override_map(self) -> dict[str, str]:
        """``key -> value`` of the job's overrides (``+``/``~`` prefixes dropped)."""
        out = {}
        for ov in self.overrides:
            key, sep, value = ov.partition("=")
            if sep:
                out[key.lstrip("+~")] = value
        return out


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _job_num(run_dir: Path, record: dict) -> int | None:
    hydra_cfg = _read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    num = ((hydra_cfg.get("hydra") or {}).get("job") or {}).get("num", record.get("job_num"))
    return num if isinstance(num, int) else None


def _finite_or_none(value):
    # json writes NaN/Infinity for a diverged run; keep them visible as NaN but never as a crash later
    return value if not isinstance(value, float) or math.isfinite(value) else float("nan")


def load_job(metrics_file: Path) -> Job:
    """A Job from its ``metrics.json`` (a corrupt file is a failed job that says so)."""
    run_dir = metrics_file.parent
    try:
        record = json.loads(metrics_file.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        record = {"status": "failed", "error": f"unreadable metrics.json: {exc}"}
    record.pop("history", None)
    record = {k: _finite_or_none(v) for k, v in record.items()}
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        overrides = record.get("overrides") if isinstance(record.get("overrides"), list) else []
    return Job(run_dir=run_dir, record=record, overrides=[str(o) for o in overrides],
               num=_job_num(run_dir, record))


def _metrics_files(root: Path):
    for path in sorted(root.rglob("metrics.json")):
        if not _SKIP.intersection(path.relative_to(root).parts[:-1]):
            yield path


def find_jobs(dirs: list[str | Path]) -> list[Job]:
    """Every job under ``dirs`` (sweep dirs, run dirs, or folders of either), each once, sorted by sweep and job
    number."""
    if not dirs:
        raise SaefwError("no directories to compare: give sweep or run dirs, e.g. "
                         "python -m saefw.compare outputs/sweeps/<date>/<time>")
    jobs: dict[Path, Job] = {}
    for d in dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise SaefwError(f"{d} is not a directory: give sweep dirs (outputs/sweeps/<date>/<time>) or run dirs")
        found = list(_metrics_files(root.resolve()))
        if not found:
            raise SaefwError(f"{d} holds no metrics.json: not a saefw run or sweep directory")
        for path in found:
            jobs.setdefault(path.parent, load_job(path))
    return sorted(jobs.values(), key=lambda j: (str(j.sweep_dir), j.num if j.num is not None else 1 << 30, j.name))
