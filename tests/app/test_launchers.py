"""Sweeps through hydra-submitit-launcher: a 2-job sweep run by ``hydra/launcher=submitit_local`` through the real
CLI (each job in its own process, as on a cluster), and the SLURM preset's sbatch script."""
import json
import os
import stat

from helpers import TINY, read_csv, run_cli
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf


def test_submitit_local_sweep_with_a_failing_job(tiny_model, tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "hydra/launcher=submitit_local", f"model={tiny_model}", *TINY, "arch=topk",
                "arch.k=100000,8", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=900)
    # the failure happened in a launcher subprocess: recorded in its job dir, and it still sets the exit status
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"error: 1 of 2 jobs failed: {sweep / '0_topk'}" in r.stderr
    line = "arch.k=100000 is invalid for topk: it must be an integer in [1, d_sae=128]"
    failed = json.loads((sweep / "0_topk" / "metrics.json").read_text())
    assert failed["status"] == "failed" and failed["error"].startswith(line)
    ok = json.loads((sweep / "1_topk" / "metrics.json").read_text())
    assert ok["l0"] == 8.0 and "status" not in ok
    # each job ran in a process of its own, started by submitit (its logs are in .submitit/<job id>/)
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
    # the compare callback ran in the launching process over both jobs
    rows = read_csv(sweep / "tradeoff.csv")
    assert [(x["job"], x["status"]) for x in rows] == [("0_topk", "failed"), ("1_topk", "ok")]
    assert (sweep / "tradeoff.html").is_file() and "compare wrote:" in r.stdout


def _slurm_params(overrides):
    from saefw.app.cli import conf_dir
    from saefw.registry import discover
    from saefw.training.config import register_schema

    register_schema()
    discover()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    return cfg, {k: v for k, v in OmegaConf.to_container(cfg.hydra.launcher, resolve=True).items()
                 if k != "_target_"}


def test_slurm_preset_asks_for_one_task_per_device_on_each_node(tmp_path, monkeypatch):
    """The preset composes and, through submitit's own SLURM executor (parameters mapped exactly as the Hydra
    launcher maps them), gives an sbatch script with ``trainer.num_nodes`` nodes × ``trainer.devices`` tasks."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg, params = _slurm_params(["trainer.devices=4", "trainer.num_nodes=2", "trainer.accelerator=gpu",
                                 "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["max_num_timeout"] >= 1  # a job that times out or is preempted is requeued (and resumes)
    # submitit only looks for `srun` on PATH before it writes the script (nothing is submitted or run here)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"],
                                     slurm_max_num_timeout=params["max_num_timeout"])
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    script = executor._executor._make_submission_file_text("python -m saefw", "uid")
    for directive in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                      "--job-name=saefw", "--time=240"):
        assert f"#SBATCH {directive}" in script, directive
    assert "--signal=USR2@120" in script  # submitit's requeue signal before the time limit
    # one Lightning rank per task, started by srun: Lightning's SLURM detection needs no saefw launcher
    assert "\nsrun " in script


def test_slurm_preset_for_cpu_partitions(tmp_path):
    _, params = _slurm_params(["trainer.devices=2", "hydra.launcher.gpus_per_node=null",
                               f"hydra.sweep.dir={tmp_path}"])
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (1, 2, None)
