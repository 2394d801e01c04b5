"""Command-line entry points: every command is one Hydra app with its config under ``conf/``.

``python -m saefw`` trains; other commands (``python -m saefw.evaluate`` ...) call :func:`command` with their
own config name, so overrides, ``--help``, plugin discovery and error reporting work the same everywhere.

``+arch=gated`` (the form in the user's card) and ``arch=gated`` both work: the plugin families are already in
the defaults list, so a leading ``+`` on them is dropped before Hydra sees it.

In a multirun (``-m``) a job that fails (a bad value, a diverged run, any exception) is recorded as failed in its
own dir (``metrics.json`` with ``status: failed`` and the one error line) and the sweep goes on; the command exits
with status 1 at the end if any job failed. A single run stops at the error as before (one line, exit 2). A config Hydra cannot compose (unknown option,
wrong type, unknown key) is reported the same way: one ``error:`` line, exit 2 (:mod:`saefw.app.hydra_errors`).

Every command's console is quiet (:mod:`saefw.app.quiet`) unless ``verbose=true`` or ``hydra.verbose=true``, and its
wall time counts from the process start (a multirun job's: from the job's start; see :func:`job_clock`).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf.errors import MissingMandatoryValue

import saefw
from saefw.app.allocator import keep_freed_memory
from saefw.app.clock import WallClock
from saefw.app.conf import conf_dir
from saefw.app.failures import write_failed_record
from saefw.app.hydra_errors import (
    hold_stderr,
    is_composition_error,
    one_line,
    release_stderr,
)
from saefw.app.quiet import apply as quiet_console
from saefw.errors import SaefwError, unset_value
from saefw.registry import discover

log = logging.getLogger("saefw")
_PLUS_FAMILY = re.compile(r"^\+(source|arch|penalty|explainer)=")


def normalise_overrides(args: list[str]) -> list[str]:
    return [_PLUS_FAMILY.sub(r"\1=", a) for a in args]


def on_command_line(key: str) -> bool:
    """Whether the running Hydra app's command line (or its multirun sweep) set ``key`` itself, e.g.
    ``evaluators=[l0,mmcs]``; False outside a Hydra app (library use)."""
    if not HydraConfig.initialized():
        return False
    pattern = re.compile(rf"^[+~]*{re.escape(key)}(=|$)")
    return any(pattern.match(o) for o in HydraConfig.get().overrides.task)


class _SweepTally:
    """Jobs run and failed in this process's multirun. Hydra's basic launcher (and the Optuna sweeper on it) run
    every job in-process; for a launcher that runs jobs elsewhere (submitit) the failures are read back from the
    job dirs when the multirun ends (:func:`tally_job_dirs`, called by the compare callback)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.jobs = 0
        self.failed: list[str] = []


_tally = _SweepTally()


def tally_job_dirs(sweep_dir: Path) -> None:
    """Count the jobs of a finished multirun from their dirs (``metrics.json``, ``status: failed`` for a failed
    one), so jobs that ran in other processes (submitit launchers) also set the command's exit status."""
    import json

    seen = {str(Path(p).resolve()) for p in _tally.failed}
    jobs = 0
    for record in sorted(Path(sweep_dir).glob("*/metrics.json")):
        jobs += 1
        try:
            failed = json.loads(record.read_text()).get("status") == "failed"
        except (OSError, ValueError):
            continue
        if failed and str(record.parent.resolve()) not in seen:
            _tally.failed.append(str(record.parent))
    _tally.jobs = max(_tally.jobs, jobs)


def process_start() -> float:
    """When this process started (epoch seconds), so a command's wall time includes interpreter start-up and
    imports: the start time in /proc/self/stat (clock ticks after boot) against /proc/uptime. Where there is no
    /proc, or it disagrees with when saefw was first imported (later than that, or more than a minute before it:
    a process that did other things first), the import time."""
    imported = saefw.IMPORTED
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # fields from the 3rd (state) on
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError, AttributeError):
        return imported
    started = time.time() - uptime + since_boot
    return started if imported - 60.0 <= started <= imported + 0.05 else imported


class _Clock:
    """The running command's wall clock (a :class:`saefw.app.clock.WallClock`), set by :func:`command` per job."""

    first_command = True
    current = None


def job_clock():
    """The :class:`~saefw.app.clock.WallClock` the running command's ``wall_seconds`` count from: the process start
    for the command line's command; a multirun job's own start (several jobs share the process); the call's start
    for :func:`command` called with ``argv`` or a second time in one process; now outside a command."""
    return _Clock.current or WallClock.now()


def _end_wandb_run(failed: bool) -> None:
    """Close the job's W&B run, so the next job of the multirun opens its own (Lightning's WandbLogger reuses
    any run still open in the process)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=1 if failed else 0)
    except Exception as exc:  # noqa: BLE001 - closing the log must never turn a finished job into a failed one
        log.warning("could not close the job's W&B run: %s", exc)


def command(config_name: str, task: Callable[[Any, Path], Any], argv: list[str] | None = None,
            schema: Callable[[], None] | None = None) -> Any:
    """Run ``task(cfg, output_dir)`` as the Hydra app ``conf/<config_name>.yaml``; ``schema()`` first registers
    the structured config (and resolvers) that config names.

    A :class:`~saefw.errors.SaefwError` (a user mistake: bad value, missing file) prints one ``error:`` line and
    exits with status 2, never a traceback. In a multirun a failing job (any exception) is recorded in its dir
    (:func:`saefw.app.failures.write_failed_record`), prints its error line and returns None, so the other jobs run;
    the command then exits with status 1."""
    # the command line's own call (argv None) counts from the process start; an in-process call from its own start
    from_process = argv is None and _Clock.first_command
    started, _Clock.first_command = process_start() if from_process else time.time(), False

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network at run time unless the user asks for it
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    sys.argv = [sys.argv[0], *normalise_overrides(argv)]
    if schema is not None:
        schema()
    _tally.reset()
    try:
        discover()
    except SaefwError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    @hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")
    def _task(cfg):
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        # a multirun job's wall time is its own; a single run's, the process's
        _Clock.current = WallClock.now("job") if multirun else WallClock(started, "process" if from_process
                                                                        else "call")
        keep_freed_memory()  # here, not before Hydra: a launcher (submitit) runs this in processes of its own
        release_stderr()  # composed: from here on stderr is the real one
        quiet_console(verbose=bool(cfg.get("verbose", False)) or bool(hc.verbose))
        output_dir = Path(hc.runtime.output_dir)
        if not multirun:
            try:
                return task(cfg, output_dir)
            except (SaefwError, MissingMandatoryValue) as exc:
                print(f"error: {user_error(exc)}", file=sys.stderr)
                raise SystemExit(2) from None
        return _multirun_job(task, cfg, output_dir, hc)

    gate = hold_stderr()  # Hydra's composition errors are condensed to one line (saefw.app.hydra_errors)
    try:
        result = _task()
    except SystemExit as exc:
        if gate.holding and exc.code not in (0, None) and is_composition_error(gate.captured()):
            gate.release(forward=False)
            print(f"error: {one_line(gate.captured())}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    finally:
        gate.release()
    if _tally.failed:
        print(f"error: {len(_tally.failed)} of {_tally.jobs} jobs failed: {', '.join(_tally.failed)}",
              file=sys.stderr)
        raise SystemExit(1)
    return result


def _multirun_job(task: Callable[[Any, Path], Any], cfg, output_dir: Path, hc) -> Any:
    """One job of a multirun: a failure (any exception) is recorded in its dir and returns None, so the sweep goes
    on; its W&B run is closed either way."""
    _tally.jobs += 1
    failed = True
    try:
        result = task(cfg, output_dir)
        failed = False
        return result
    except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the sweep
        exc = user_error(exc)
        record = write_failed_record(output_dir, exc, cfg, list(hc.overrides.task), hc.job.get("num"))
        _tally.failed.append(str(output_dir))
        print(f"error: {record['error']}", file=sys.stderr)
        log.warning("job %s failed; recorded in %s (the sweep goes on)", hc.job.get("num"), output_dir / "metrics.json")
        return None
    finally:
        _end_wandb_run(failed)


def user_error(exc: BaseException) -> BaseException:
    """``exc`` as the user should read it: OmegaConf's MissingMandatoryValue (a command read a ``???`` key nobody
    set, e.g. ``python -m saefw.features`` without ``run=``) becomes the :func:`saefw.errors.unset_value` error
    naming the key; anything else is returned as it is."""
    if isinstance(exc, MissingMandatoryValue):
        error = unset_value(str(exc.full_key or "a mandatory value"))
        error.__cause__ = exc
        return error
    return exc
