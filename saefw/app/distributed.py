"""Data-parallel training with Lightning: ranks, devices, and how the other ranks are started.

* ``trainer.strategy=ddp trainer.devices=N``: ``train.batch_size`` stays the *global* batch (tokens per optimizer
  step), so a run means the same thing on any number of devices: every rank trains on ``batch_size / N`` rows of
  each global batch (:mod:`saefw.sources.shuffle`), and N ranks together consume the tokens a one-process run does.
* On one machine Lightning starts ranks 1..N-1 as subprocesses. Lightning's own command for them reruns
  ``sys.argv`` (a whole sweep with ``-m``, or submitit's bootstrap module under a submitit launcher), so saefw
  starts them itself: ``python -m saefw <this job's overrides> hydra.run.dir=<this job's dir>``, which works the
  same for a single run, any job of a multirun, and a job a launcher runs elsewhere.
* Under SLURM (``srun`` tasks = ``trainer.devices`` per node × ``trainer.num_nodes``) or ``torchrun`` every rank is
  started by the cluster and Lightning's environment detection assigns the ranks; nothing is spawned.

Before Lightning has set up the process group, :func:`is_global_zero` tells a process its rank from the variables
those launchers set, so work that must happen once (writing files, printing, harvesting) happens on rank 0.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers.subprocess_script import (
    _SubprocessScriptLauncher,
)

from saefw.errors import SaefwError

UNSUPPORTED = ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true",
               "ddp_fork_find_unused_parameters_true", "ddp_notebook_find_unused_parameters_true")
DDP = {"ddp": False, "ddp_find_unused_parameters_true": True}  # strategy -> find_unused_parameters
APP_MODULE = "saefw"  # what `python -m` runs for the other ranks of a training run


def is_global_zero() -> bool:
    """Whether this process is global rank 0, as its launcher announced it in the environment (torchrun's
    ``RANK``, SLURM's ``SLURM_PROCID`` for a multi-task step, ``LOCAL_RANK``/``NODE_RANK`` for the ranks the
    subprocess launcher starts); True when nothing is distributed."""
    ranks = [os.environ.get(v, "") for v in ("RANK", "LOCAL_RANK", "NODE_RANK")]
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        ranks.append(os.environ.get("SLURM_PROCID", ""))
    return all(int(r) == 0 for r in ranks if r.strip().isdigit())


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``train.batch_size`` is the global batch: it must split evenly over the ranks."""
    if batch_size % world_size:
        raise SaefwError(f"train.batch_size={batch_size} does not split evenly over {world_size} ranks; use a "
                         f"multiple of {world_size} (it is the global batch: each rank trains on "
                         f"batch_size / {world_size} rows)")


def local_device() -> str:
    """``cuda:<local rank>`` when CUDA is available (each rank on its own GPU), else ``cpu``."""
    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or "0"
    return f"cuda:{int(local) % max(1, torch.cuda.device_count())}"


def _many(devices) -> bool:
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return torch.cuda.device_count() > 1
    if "," in text:
        return len([d for d in text.split(",") if d.strip()]) > 1
    return text.isdigit() and int(text) > 1


def check_accelerator(accelerator) -> None:
    """A GPU asked for on a machine without one: one clear line instead of Lightning's traceback."""
    name = str(accelerator).lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise SaefwError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible here "
                         f"(torch.cuda.is_available() is False); valid on this machine: cpu, auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SaefwError(f"trainer.accelerator={accelerator} but MPS is not available here; valid: cpu, auto")


def strategy_kwargs(trainer_kwargs: dict, checkpoint_io) -> dict:
    """The Trainer's ``strategy``/``plugins`` arguments: saefw's DDP strategy (which starts the other ranks
    correctly) wherever Lightning would run DDP, and the atomic checkpoint IO in every case."""
    strategy = trainer_kwargs.get("strategy", "auto")
    if not isinstance(strategy, str):
        return {"strategy": strategy, "plugins": [checkpoint_io]}
    if strategy in UNSUPPORTED:
        raise SaefwError(f"trainer.strategy={strategy} is not supported (it pickles the data source into new "
                         f"processes); valid: auto, ddp, ddp_find_unused_parameters_true")
    many = _many(trainer_kwargs.get("devices", "auto")) or int(trainer_kwargs.get("num_nodes", 1) or 1) > 1
    if strategy in DDP or (strategy == "auto" and many):
        return {"strategy": SaefwDDPStrategy(find_unused_parameters=DDP.get(strategy, False),
                                             checkpoint_io=checkpoint_io)}
    return {"strategy": strategy, "plugins": [checkpoint_io]}


_LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_env_before_launch: dict[str, str | None] | None = None


def end_process_group() -> None:
    """Close the process group after training and, in the process that started the other ranks, put back the
    environment it set for them: the next job of a multirun in this process starts its own ranks (with
    ``LOCAL_RANK`` left set, Lightning would take the ranks for started already and wait for them forever), and a
    rank still waiting in a collective after a failure gets an error instead of waiting."""
    global _env_before_launch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if _env_before_launch is not None:
        for var, value in _env_before_launch.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        _env_before_launch = None


def rank_command(local_rank: int) -> tuple[list[str], str | None]:
    """The command line (and working dir) that runs rank ``local_rank`` of the current job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # library use outside a Hydra app: Lightning's own rerun of sys.argv
        from lightning_fabric.strategies.launchers.subprocess_script import (
            _basic_subprocess_cmd,
        )

        return list(_basic_subprocess_cmd()), None
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task]
    command = [sys.executable, "-m", APP_MODULE, *overrides, f"hydra.run.dir={hc.runtime.output_dir}",
               "hydra.output_subdir=null", f"hydra.job.name={hc.job.name}_rank{local_rank}",
               "hydra/job_logging=stdout", "hydra/hydra_logging=none"]
    return command, hc.runtime.cwd


class _RankLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher with saefw's command for the other ranks (:func:`rank_command`)."""

    def _call_children_scripts(self) -> None:
        global _env_before_launch
        self._check_can_spawn_children()
        self.procs = []
        _env_before_launch = {var: os.environ.get(var) for var in _LAUNCH_VARS}
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            command, cwd = rank_command(local_rank)
            self.procs.append(subprocess.Popen(command, env=child_env, cwd=cwd))


class SaefwDDPStrategy(DDPStrategy):
    """Lightning's DDP (``popen`` start method), with the other ranks started by :class:`_RankLauncher`."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = _RankLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
