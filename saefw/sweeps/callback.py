"""Runs the compare step at the end of every multirun (``hydra.callbacks.compare`` in conf/config.yaml), writing
``tradeoff.csv/.png/.html`` into the sweep dir. A failure here only warns: the jobs' results are already on disk
and ``python -m saefw.compare <sweep dir>`` can redo it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from saefw.app.failures import error_line

log = logging.getLogger("saefw")


class CompareCallback(Callback):
    """``on_multirun_end``: compare the sweep's jobs into the sweep dir, with its own W&B run."""

    def __init__(self, enabled: bool = True, wandb_mode: str = "offline", wandb_project: str = "saefw",
                 wandb_entity: str | None = None) -> None:
        self.enabled = enabled
        self.wandb_mode = wandb_mode
        self.wandb_project = wandb_project
        self.wandb_entity = wandb_entity

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from saefw.app.hydra_errors import release_stderr

        release_stderr()  # the sweep composed; jobs may run in other processes (submitit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from saefw.app.cli import tally_job_dirs

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            tally_job_dirs(sweep_dir)  # jobs run by an out-of-process launcher count in the exit status too
        if not self.enabled:
            return
        try:
            from saefw.app.wandb_settings import WandbSettings
            from saefw.sweeps.report import compare

            sweep_dir = Path(str(config.hydra.sweep.dir))
            if not sweep_dir.is_dir():
                return  # no job ran (e.g. every job failed to compose): nothing to compare
            compare([sweep_dir], sweep_dir, WandbSettings(mode=self.wandb_mode, project=self.wandb_project,
                                                          entity=self.wandb_entity))
        except Exception as exc:  # noqa: BLE001 - the compare step must never fail the sweep
            log.warning("compare step failed (the sweep's results are intact; rerun python -m saefw.compare "
                        "on the sweep dir): %s", error_line(exc))
