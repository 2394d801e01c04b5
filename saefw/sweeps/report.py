"""The compare step: collect jobs → table with frontiers → CSV, PNG, HTML → W&B run → printed summary."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saefw.app.wandb_settings import WandbSettings
from saefw.sweeps.html_page import write_html
from saefw.sweeps.jobs import find_jobs
from saefw.sweeps.plots import write_png
from saefw.sweeps.table_text import format_table, write_csv
from saefw.sweeps.tradeoff import Tradeoff, build_tradeoff
from saefw.sweeps.wandb_compare import log_compare_run

CSV_NAME, PNG_NAME, HTML_NAME = "tradeoff.csv", "tradeoff.png", "tradeoff.html"


@dataclass
class CompareOutput:
    """What the compare step wrote."""

    table: Tradeoff
    csv: Path
    png: Path | None
    html: Path
    wandb_dir: Path | None


def is_sweep_dir(path: Path) -> bool:
    """A folder of jobs (a Hydra sweep dir or any folder of runs), not one run's own dir."""
    return Path(path).is_dir() and not (Path(path) / "metrics.json").exists()


def compare(dirs: list[str | Path], out_dir: Path, wandb: WandbSettings | None = None,
            echo: bool = True) -> CompareOutput:
    """Compare every job under ``dirs`` and write ``tradeoff.csv``, ``tradeoff.png`` and ``tradeoff.html`` (and a
    W&B compare run, offline by default) into ``out_dir``."""
    jobs = find_jobs(dirs)
    table = build_tradeoff(jobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(table, out_dir / CSV_NAME)
    png = write_png(table, out_dir / PNG_NAME)
    html = write_html(table, out_dir / HTML_NAME)
    group = Path(dirs[0]).resolve().name if len(dirs) == 1 else out_dir.resolve().name
    wandb_dir = log_compare_run(table, out_dir, wandb or WandbSettings(), group, png)
    if echo:
        print(format_table(table))
        written = [csv_path, png, html] + ([wandb_dir] if wandb_dir else [])
        print("\ncompare wrote: " + ", ".join(str(p) for p in written if p is not None), flush=True)
    return CompareOutput(table=table, csv=csv_path, png=png, html=html, wandb_dir=wandb_dir)
