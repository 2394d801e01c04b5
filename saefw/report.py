"""What a run reports: loggers (CSV, W&B), the evaluation history, metrics.json, plots and the printed summary.

The metrics record is built in one place (:meth:`Reporter.record`) for the normal and the interrupted exit."""
from __future__ import annotations

import os
import secrets
import string
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from saefw.atomic import atomic_path, write_json
from saefw.quiet import tidy_wandb_logger
from saefw.wandb_mode import effective_mode, fall_back

SUMMARY_KEYS = ("l0", "explained_variance", "ce_loss_recovered", "ce_delta", "kl_div", "dead_fraction",
                "shrinkage", "mmcs")


@dataclass(frozen=True)
class WallClock:
    """Where a run's wall time counts from: ``since`` (epoch seconds) and what that instant was, ``origin``:
    ``process`` (the process start: a single run from the command line, interpreter start-up and imports
    included), ``job`` (the start of a multirun job) or ``call`` (the library call, e.g. :func:`saefw.run.run`
    called from Python)."""

    since: float
    origin: str

    @classmethod
    def now(cls, origin: str = "call") -> WallClock:
        return cls(time.time(), origin)

    def seconds(self) -> float:
        return time.time() - self.since


class PhaseTimer:
    """Wall-clock seconds per phase of a run (``with timer("train"): ...``), recorded in metrics.json as ``timings``
    so a user sees where a run's time went: startup (from the clock's start to the first phase), model_load,
    data_setup, harvest, init, train, periodic_evaluate, evaluate, save. Together they make up the run's
    ``wall_seconds``. ``announce`` (e.g. ``print``) is given one line per finished phase."""

    def __init__(self, clock: WallClock | None = None, announce: Callable[[str], None] | None = None):
        clock = clock or WallClock.now()
        self._origin = time.perf_counter() - clock.seconds()  # the clock's start on the perf_counter scale
        self._announce = announce
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._charged = 0.0  # seconds of the running phase already counted under another name
        self._notes: list[str] = []  # what was charged elsewhere during the running phase

    @contextmanager
    def __call__(self, name: str, parts: Callable[[], dict[str, float]] | None = None, announce: bool = True):
        """Time phase ``name`` (again: its seconds add up); ``parts`` (called when it ends) names seconds of it that
        are phases of their own (e.g. the harvest inside data setup), split out with :meth:`split`;
        ``announce=False``: no line for this part of the phase (a later part's line gives the total)."""
        t0 = time.perf_counter()
        if not self.seconds:
            self._add("startup", t0 - self._origin)
            self._say("startup", self.seconds["startup"])
        outer = self._current, self._charged, self._notes
        self._current, self._charged, self._notes = name, 0.0, []
        ok = False
        try:
            yield
            ok = True
        finally:
            self._add(name, time.perf_counter() - t0 - self._charged)
            notes = self._notes
            for part, seconds in (parts() if parts else {}).items():
                moved = self.split(name, part, seconds)
                notes.append(f"{part} {moved:.1f} s")
            self._current, self._charged, self._notes = outer
            if ok and announce:
                self._say(name, self.seconds[name], notes)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)

    def _say(self, name: str, seconds: float, notes: list[str] | tuple = ()) -> None:
        if self._announce is not None:
            self._announce(f"{name:<10} {seconds:7.1f} s" + (f"  ({', '.join(notes)})" if notes else ""))

    def charge(self, part: str, seconds: float) -> None:
        """Count ``seconds`` of the running phase as ``part`` instead (a model loaded lazily while harvesting or
        evaluating is model_load time, whichever phase needed it first)."""
        self._add(part, seconds)
        if self._current is not None:
            self._charged += seconds
            self._notes.append(f"+{part} {seconds:.1f} s")

    def split(self, whole: str, part: str, seconds: float) -> float:
        """Move ``seconds`` of phase ``whole`` into its own phase ``part`` (e.g. harvesting inside data setup);
        returns the seconds moved."""
        seconds = round(min(max(seconds, 0.0), self.seconds.get(whole, 0.0)), 2)
        self.seconds[part] = round(self.seconds.get(part, 0.0) + seconds, 2)
        self.seconds[whole] = round(self.seconds.get(whole, 0.0) - seconds, 2)
        return seconds


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
        """What a checkpoint carries for a resumed run (see :mod:`saefw.checkpoint`)."""
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
        logger = WandbLogger(project=cfg.wandb.project, entity=cfg.wandb.entity, group=_sweep_group(cfg),
                             name=cfg.wandb.name or self.run_dir.name, tags=tags + list(cfg.wandb.tags),
                             save_dir=str(self.run_dir), offline=mode == "offline", id=self.wandb_id,
                             resume="allow", config=OmegaConf.to_container(cfg, resolve=True))
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


def _fmt(record: dict, key: str) -> str:
    se = record.get(f"{key}_se")
    return f"{record[key]:.4f}" + (f" ± {se:.4f}" if se is not None else "")


WALL_PHASES = ("startup", "harvest", "train", "evaluate")  # the phases the summary's wall time line names


def wall_time(record: dict) -> str:
    """``161 s (process; startup 9 s, harvest 0 s, train 92 s, evaluate 60 s)``: the record's wall_seconds, what
    they count from (see :class:`WallClock`) and the main phases of its ``timings``."""
    parts = [f"{k} {record['timings'][k]:.0f} s" for k in WALL_PHASES if k in record.get("timings", {})]
    head = "; ".join(x for x in (record.get("wall_from"), ", ".join(parts)) if x)
    return f"{record['wall_seconds']:.0f} s" + (f" ({head})" if head else "")


def print_summary(record: dict, run_dir: Path, title: str = "saefw run summary") -> None:
    rows = [("arch", record.get("arch")), ("penalty", record.get("penalty"))]
    if record.get("layer") is not None:
        rows.append(("layer / site", f"{record['layer']} / {record['site']}"))
    rows += [(label, f"{record[k]:,}") for k, label in (("tokens", "tokens"), ("eval_tokens", "held-out tokens"))
             if k in record]
    rows += [(k, _fmt(record, k)) for k in SUMMARY_KEYS if k in record]
    if "activation_store" in record:
        rows.append(("activation store", record["activation_store"]))
    rows += [("wall time", wall_time(record)), ("run dir", str(run_dir))]
    rows = [(k, v) for k, v in rows if v is not None]
    width = max(len(k) for k, _ in rows)
    print("\n".join(["", title, "-" * 40] + [f"{k:<{width}}  {v}" for k, v in rows]), flush=True)
