"""What a run reports: loggers (CSV, W&B), the evaluation history, metrics.json and plots (the printed summary:
:mod:`saefw.app.summary`; the run's clock and phase timings: :mod:`saefw.app.clock`).

The metrics record is built in one place (:meth:`Reporter.record`) for the normal and the interrupted exit."""
from __future__ import annotations

import os
import secrets
import string
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from saefw.app.atomic import atomic_path, write_json
from saefw.app.clock import WallClock
from saefw.app.quiet import tidy_wandb_logger
from saefw.app.wandb_settings import effective_mode, fall_back
from saefw.training import shared_batches


def _start_when_id_free(logger, wait_seconds: float = 60.0) -> None:
    """Start a resumed run's W&B run now, waiting while its id is still "in use": the W&B service of a killed
    run lives on until it notices its parent is gone (seconds on a busy machine)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            logger.experiment
            return
        except Exception as exc:  # noqa: BLE001 - W&B raises its own error types; only "in use" is waited out
            if "in use" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.ndim == 0)}


def _sweep_group(cfg: DictConfig) -> str | None:
    if cfg.wandb.group is not None:
        return cfg.wandb.group
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None
    except ValueError:  # not inside a Hydra app
        return None


class Reporter:
    """Collects a run's results and writes them into ``run_dir``.

    ``write=False`` (ranks other than 0 of a data-parallel run) makes a reporter without loggers that writes
    nothing. A resumed run passes its checkpoint's saefw block as ``resume_state``: the evaluation history so far,
    the same W&B run id (logging continues in that run), and the CSV log's rows up to ``resume_step``.
    ``clock``: where the record's ``wall_seconds`` counts from (default: now, the reporter's construction)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, base: dict, write: bool = True,
                 resume_state: dict | None = None, resume_step: int | None = None, clock: WallClock | None = None):
        self.cfg, self.run_dir, self.base, self.writes = cfg, Path(run_dir), dict(base), write
        resume_state = resume_state or {}
        self.history: list[dict] = list(resume_state.get("history", []))
        self.wandb_id: str | None = resume_state.get("wandb_id")
        self.resumed = resume_state.get("wandb_id") is not None
        self.clock = clock or WallClock.now()
        self.loggers = self._make_loggers(resume_step) if write else []

    def state(self) -> dict:
        """What a checkpoint carries for a resumed run (see :mod:`saefw.training.checkpoint`)."""
        return {"history": list(self.history), "wandb_id": self.wandb_id}

    def _make_loggers(self, resume_step: int | None) -> list:
        from pytorch_lightning.loggers import CSVLogger

        cfg = self.cfg
        old_rows = _take_csv_rows(self.run_dir / "csv", resume_step) if resume_step is not None else []
        csv = CSVLogger(save_dir=str(self.run_dir), name="csv", version="")
        csv.experiment.metrics.extend(old_rows)  # written back with the next save, before the new rows
        loggers = [csv]
        mode = effective_mode(cfg.wandb.mode)
        if mode != "disabled":
            loggers.append(self._wandb_logger(mode))
        return loggers

    def _wandb_logger(self, mode: str):
        from pytorch_lightning.loggers import WandbLogger

        cfg = self.cfg
        os.environ.setdefault("WANDB_SILENT", "true")
        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"  # never a login prompt
        if self.wandb_id is None:
            self.wandb_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        tags = [f"arch:{self.base['arch']}"] + [f"{k}:{self.base[k]}" for k in ("layer", "site")
                                                if self.base.get(k) is not None]
        # a job of a one-pass group trains beside the others in this process: its own W&B run, not the process's
        shared = shared_batches.current()
        logger = WandbLogger(project=cfg.wandb.project, entity=cfg.wandb.entity, group=_sweep_group(cfg),
                             name=cfg.wandb.name or self.run_dir.name, tags=tags + list(cfg.wandb.tags),
                             save_dir=str(self.run_dir), offline=mode == "offline", id=self.wandb_id,
                             resume="allow", config=OmegaConf.to_container(cfg, resolve=True),
                             **({"reinit": "create_new"} if shared is not None else {}))
        tidy_wandb_logger(logger)
        if mode == "online":
            try:
                logger.experiment  # start it now: a server that fails to answer must not fail the training
            except Exception as exc:  # noqa: BLE001 - any failure to start online means: log offline
                import wandb

                fall_back(exc)
                if wandb.run is not None:
                    wandb.finish(exit_code=1)
                return self._wandb_logger("offline")
        elif self.resumed:
            _start_when_id_free(logger)
        if shared is not None:  # started now, in the job's (serial) setup; closed when the job ends
            run = logger.experiment
            shared.closers.append(lambda failed: run.finish(exit_code=1 if failed else 0))
        return logger

    def _wandb(self):
        from pytorch_lightning.loggers import WandbLogger

        return [lg for lg in self.loggers if isinstance(lg, WandbLogger)]

    def log_eval(self, metrics: dict, step: int, periodic: bool = True) -> None:
        if periodic:
            self.history.append({"step": step, **scalars(metrics)})
        for lg in self.loggers:
            lg.log_metrics({"eval/" + k: v for k, v in scalars(metrics).items()}, step=step)
        hist = {"eval/" + k: v for k, v in metrics.items() if torch.is_tensor(v) and v.ndim == 1}
        if hist and self._wandb():
            import wandb

            for lg in self._wandb():
                lg.experiment.log({k: wandb.Histogram(v.numpy()) for k, v in hist.items()}, step=step)

    def record(self, metrics: dict, steps: int, tokens: int, interrupted: bool, **extra) -> dict:
        """The metrics.json record (the same keys for a finished and an interrupted run)."""
        return {**scalars(metrics), **self.base, "steps": steps, "tokens": tokens, "interrupted": interrupted,
                **extra, "wall_seconds": round(self.clock.seconds(), 1), "wall_from": self.clock.origin,
                "history": self.history}

    def plot(self, metrics: dict) -> None:
        """The run's plots (feature_density.png)."""
        if self.writes and metrics.get("feature_density") is not None:
            plot_density(metrics["feature_density"], self.run_dir / "feature_density.png")

    def write(self, record: dict, status: str = "success") -> None:
        """The record into W&B's summary and metrics.json; the loggers finalised."""
        if not self.writes:
            return
        for lg in self._wandb():
            lg.experiment.summary.update({k: v for k, v in record.items() if isinstance(v, (int, float, str))})
        for lg in self.loggers:
            lg.finalize(status)
        write_json(self.run_dir / "metrics.json", record)


def _take_csv_rows(folder: Path, upto_step: int) -> list[dict]:
    """The rows of ``folder/metrics.csv`` logged at steps ≤ ``upto_step`` (a resumed run keeps them; later rows
    were logged after the checkpoint and are logged again), as numbers; the old file is removed."""
    import csv

    path = folder / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    for f in folder.glob("*"):
        if f.is_file():
            f.unlink()
    kept = [r for r in rows if r.get("step", 0) <= upto_step]
    for r in kept:
        r["step"] = int(r["step"])
    return kept


def plot_density(density: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(density.numpy(), bins=50)
    ax.set_xlabel("log10 firing frequency (held-out tokens)")
    ax.set_ylabel("latents")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
