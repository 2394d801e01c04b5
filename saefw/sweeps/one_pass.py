"""Many SAEs from one pass (``hydra/launcher=one_pass``): the jobs of a sweep that read identical training batches
(same source settings, model, layer, site, seed, budget, batch size and init batches: only the SAE's own settings
differ — arch, penalty, target_l0, expansion_factor, lr ...) run as one group in this process, each job in a thread
of its own, and the group's training batches are read from the activation store (or harvested live) once and
handed to every job (:mod:`saefw.training.shared_batches`).

Each job is still a job of the multirun, run by Hydra's own ``run_job`` through the normal saefw path: its job dir
with the ``.hydra`` files ``compare`` reads, its own optimizer, λ controller, checkpoints, ``metrics.json`` and W&B
run; a failing job is recorded failed in its dir (:mod:`saefw.app.cli`) and leaves the group, the others go on.
Resuming works as for any sweep: rerun the command with the same ``hydra.sweep.dir``; every job continues from
its own checkpoints (the group's stream starts at the earliest one).

The jobs' setups (composition, seeding, weight init, data-dependent init) run one at a time, so each SAE starts
exactly as it would in a separate run; training then runs in parallel (torch releases the GIL). Jobs that cannot
share batches with any other (or train on several devices) run one after another as with the basic launcher.
``one_pass.json`` in the sweep dir records the groups and what each read."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from saefw.app.allocator import one_heap_for_threads
from saefw.app.atomic import write_text
from saefw.training import shared_batches
from saefw.training.plan import RunPlan

log = logging.getLogger("saefw")

# what decides a job's training batches (besides the whole source config)
BATCH_KEYS = ("model", "layer", "site", "seed", "total_tokens", "train.batch_size", "train.init_batches")


def batch_key(cfg: DictConfig) -> str | None:
    """What a job's training batches depend on, as a string: jobs with the same key read identical batches. None for
    a job that cannot share: trained on several devices or nodes, run in a working dir of its own
    (``hydra.job.chdir``: the working dir is the process's), or a config that does not resolve (the job then reports
    its own error)."""
    try:
        trainer = cfg.trainer
        if str(trainer.get("devices", 1)) != "1" or str(trainer.get("num_nodes", 1)) != "1":
            return None
        if OmegaConf.select(cfg, "hydra.job.chdir", default=False):
            return None
        plan = RunPlan.from_config(cfg)
        key = {"source": OmegaConf.to_container(cfg.source, resolve=True), "steps": plan.steps,
               **{k: OmegaConf.select(cfg, k) for k in BATCH_KEYS}}
        return json.dumps(key, sort_keys=True, default=str)
    except Exception:  # noqa: BLE001 - a job whose config does not resolve runs alone and reports it
        return None


class _PerThreadHydraConfig:
    """Hydra's HydraConfig singleton, one per thread (each job of a group sees its own job's config through
    ``HydraConfig.get()`` and the ``${hydra:...}`` resolver); the launching thread keeps the sweep's."""

    def __init__(self, shared: HydraConfig):
        self._shared, self._local = shared, threading.local()

    @property
    def cfg(self):
        return getattr(self._local, "cfg", self._shared.cfg)

    @cfg.setter
    def cfg(self, value) -> None:
        self._local.cfg = value

    def set_config(self, cfg: DictConfig) -> None:
        HydraConfig.set_config(self, cfg)  # type: ignore[arg-type]


class _ThreadHydraConfigs:
    """Installs :class:`_PerThreadHydraConfig` for the time a group runs."""

    def __enter__(self):
        self.original = HydraConfig.instance()
        Singleton._instances[HydraConfig] = _PerThreadHydraConfig(self.original)
        return self

    def __exit__(self, *exc) -> None:
        Singleton._instances[HydraConfig] = self.original


class _JobLogs:
    """Each job's log file (Hydra's ``hydra.job_logging``, ``<job dir>/<job name>.log``) keeps its own job's
    records: Hydra configures the process's logging anew for every job, so without this the records of a whole
    group would go to the file of the job set up last."""

    def __init__(self) -> None:
        self.handlers: list[logging.Handler] = []

    def adopt(self, job_dir: Path) -> None:
        """In a job's thread, right after Hydra configured logging for it: its file takes only this thread's
        records, and the files of the group's other jobs are kept on."""
        root, ident = logging.getLogger(), threading.get_ident()
        for handler in root.handlers:
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == job_dir:
                handler.addFilter(lambda record, ident=ident: record.thread == ident)
                self.handlers.append(handler)
        for handler in self.handlers:  # a closed FileHandler opens its file again (appending) when it next writes
            if handler not in root.handlers:
                root.addHandler(handler)


class OnePassLauncher(Launcher):
    """Runs a sweep's jobs in groups that share their training batches (see the module doc). ``lag``: how many
    batches the fastest job of a group may run ahead of the slowest (the batches held in memory)."""

    def __init__(self, lag: int = 8) -> None:
        super().__init__()
        self.lag = lag
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs, groups = [], {}
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            jobs.append((idx, overrides, cfg))
            key = self._key(cfg)
            groups.setdefault(key if key is not None else f"alone-{idx}", []).append((idx, overrides, cfg))
        log.info(f"Launching {len(jobs)} jobs in {len(groups)} one-pass group(s)")
        results, report = {}, []
        for members in groups.values():
            nums = [idx for idx, _, _ in members]
            for idx, overrides, _ in members:
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            if len(members) == 1:
                idx, _, cfg = members[0]
                results[idx] = self._run_job(cfg)
                report.append({"jobs": nums, "shared": False})
            else:
                feed = self._run_group(members, results)
                report.append({"jobs": nums, "shared": True, **feed.report()})
                log.info("one pass: jobs %s trained on the same batches, read once (%d batches read for %d jobs)",
                         nums, feed.batches_read, len(nums))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        write_text(sweep_dir / "one_pass.json", json.dumps({"groups": report}, indent=2))
        return [results[idx] for idx, _, _ in jobs]

    def _key(self, cfg: DictConfig) -> str | None:
        with _ThreadHydraConfigs():  # the job's own ${hydra:...} values while its key resolves
            HydraConfig.instance().set_config(cfg)
            return batch_key(cfg)

    def _run_job(self, cfg: DictConfig, logs: _JobLogs | None = None) -> JobReturn:
        task = self.task_function
        if logs is not None:
            def task(task_cfg, run=self.task_function):  # called by run_job once the job's logging is set up
                logs.adopt(Path(HydraConfig.get().runtime.output_dir))
                return run(task_cfg)
        return run_job(hydra_context=self.hydra_context, task_function=task, config=cfg,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def _run_group(self, members: list, results: dict) -> shared_batches.SharedBatches:
        """The group's jobs, each in a thread; a job's setup starts once the previous one's has ended (it joined
        the batch stream, or it ended)."""
        one_heap_for_threads()  # the jobs' threads reuse each other's freed blocks (saefw.app.allocator)
        feed = shared_batches.SharedBatches(self.lag)
        group = [(feed.member(idx), idx, cfg) for idx, _, cfg in members]  # all of them, before the stream starts
        threads, logs = [], _JobLogs()
        with _ThreadHydraConfigs():
            for member, idx, cfg in group:
                thread = threading.Thread(target=self._member, args=(member, cfg, results, idx, logs),
                                          name=f"one_pass-job{idx}", daemon=True)
                threads.append(thread)
                thread.start()
                member.ready.wait()
            for thread in threads:
                thread.join()
        return feed

    def _member(self, member: shared_batches.Member, cfg: DictConfig, results: dict, idx: int,
                logs: _JobLogs) -> None:
        shared_batches.enter(member)
        failed = True
        try:
            ret = self._run_job(cfg, logs)
            # a failed saefw job is recorded in its dir and returns None (saefw.app.cli)
            failed = ret.status != JobStatus.COMPLETED or ret._return_value is None
        except BaseException as exc:  # noqa: BLE001 - Hydra's own failure around the job: the sweeper reports it
            ret = JobReturn()
            ret.status, ret.return_value = JobStatus.FAILED, exc
        finally:
            member.leave()
            try:
                member.close(failed)
            except Exception as exc:  # noqa: BLE001 - closing the log must never fail the job
                log.warning("could not close job %s's W&B run: %s", idx, exc)
            shared_batches.enter(None)
        results[idx] = ret
