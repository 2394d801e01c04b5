"""Data-parallel training through the real CLI on CPU (gloo): ``trainer.strategy=ddp trainer.devices=2``, and the
same run as two SLURM tasks on two "nodes" (the environment srun gives each task, set by hand).

Tolerance: with ``train.batch_size`` as the global batch, each of the two ranks trains on half of every global
batch of the one-process run (checked row by row below), and DDP averages the two halves' gradients, which is the
gradient of the one-process batch. The runs differ only in the order of floating-point sums (two means of 32 rows
averaged, gradients summed across ranks), i.e. ~1e-7 relative per step; Adam and the λ controller carry that
through 100 steps. The test allows 1e-3 relative on the final metrics; measured: ≤ 1e-6."""
import json
import os
import re

import pytest
from helpers import cli_env, install_ledger, read_ledger, run_cli, spawn_cli

DDP_RUN = ["layer=1", "total_tokens=6400", "train.batch_size=64", "train.eval_every_steps=50",
           "train.checkpoint_every_steps=40", "source.context_size=32", "source.eval_contexts=6",
           "source.buffer_tokens=1024", "source.shard_contexts=8", "expansion_factor=4",
           "train.dead_window_tokens=256", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
STEPS = 100
COMPARED = ("l0", "explained_variance", "mse", "ce_loss_recovered", "dead_fraction", "shrinkage",
            "final_coefficient")
TOLERANCE = 1e-3


def _rel(a: dict, b: dict) -> dict:
    return {k: abs(b[k] - a[k]) / max(abs(a[k]), 1e-12) for k in COMPARED}


@pytest.fixture(scope="module")
def ddp_runs(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    env = cli_env(SAEFW_STORE=str(tmp / "stores"))
    out = {}
    for name, extra in (("single", []), ("ddp", ["trainer.strategy=ddp", "trainer.devices=2"])):
        ledger_args, ledger = install_ledger(tmp, f"ledger_{name}")
        run_dir = tmp / name
        proc = spawn_cli(f"model={tiny_model}", *DDP_RUN, *ledger_args, *extra, f"hydra.run.dir={run_dir}", cwd=tmp,
                         env=env, log=tmp / f"{name}.log")
        assert proc.wait(timeout=600) == 0, (tmp / f"{name}.log").read_text()[-4000:]
        out[name] = (run_dir, ledger, (tmp / f"{name}.log").read_text())
    return out


def test_two_ranks_match_one_process_on_the_same_tokens(ddp_runs):
    single = json.loads((ddp_runs["single"][0] / "metrics.json").read_text())
    ddp = json.loads((ddp_runs["ddp"][0] / "metrics.json").read_text())
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    diffs = _rel(single, ddp)
    print("relative differences, 2 ranks vs 1 process:", diffs)
    assert all(d <= TOLERANCE for d in diffs.values()), diffs
    assert ddp["tokens_trained"] == single["tokens_trained"] == STEPS * 64 and ddp["steps"] == STEPS
    assert [h["step"] for h in ddp["history"]] == [h["step"] for h in single["history"]] == [50, 100]


def test_ranks_see_different_halves_of_each_global_batch(ddp_runs):
    one = read_ledger(ddp_runs["single"][1])
    r0, r1 = read_ledger(ddp_runs["ddp"][1], 0), read_ledger(ddp_runs["ddp"][1], 1)
    assert len(one) == len(r0) == len(r1) == STEPS
    assert r0[0]["pid"] != r1[0]["pid"]  # two processes
    for a, b, whole in zip(r0, r1, one):
        assert len(a["rows"]) == len(b["rows"]) == 32
        assert a["batch"] != b["batch"]
        # a row on both ranks is one the data holds twice (e.g. the same first token after BOS in two contexts)
        assert all(whole["rows"].count(r) >= 2 for r in set(a["rows"]) & set(b["rows"]))
        assert a["rows"] + b["rows"] == whole["rows"]  # rank 0 the first half, rank 1 the second
    # over the run, the two ranks together trained on exactly the one-process run's tokens
    assert sorted(r for e in r0 + r1 for r in e["rows"]) == sorted(r for e in one for r in e["rows"])


def test_counters_and_coefficient_agree_on_every_rank(ddp_runs):
    ddp = json.loads((ddp_runs["ddp"][0] / "metrics.json").read_text())
    states = ddp["rank_state"]
    assert len(states) == 2 and states[0] == states[1]
    assert states[0]["tokens_trained"] == STEPS * 64
    assert states[0]["dead"] == round(ddp["dead_fraction"] * ddp["d_sae"])
    assert states[0]["l0_start"] > states[0]["l0_ema"]  # λ_t was adapted, from the all-reduced L0, on both ranks


def test_files_are_written_once_by_rank_zero(ddp_runs):
    single_dir, ddp_dir = ddp_runs["single"][0], ddp_runs["ddp"][0]
    assert sorted(os.listdir(ddp_dir)) == sorted(os.listdir(single_dir))  # no per-rank extras
    assert len(list((ddp_dir / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == [
        "last.ckpt", "step-00000080.ckpt", "step-00000100.ckpt"]
    log = ddp_runs["ddp"][2]
    assert log.count("saefw run summary") == 1
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert not list(ddp_dir.glob("*rank*")) and not list(ddp_dir.glob(".pl_*"))


def test_slurm_tasks_on_two_nodes(ddp_runs, tiny_model, tmp_path):
    """Two processes with the environment ``srun --nodes=2 --ntasks-per-node=1`` gives its tasks: Lightning's
    SLURM detection makes them ranks 0 and 1 of a 2-node DDP job (nothing is spawned); the store is harvested
    once, by whichever task takes its lock first, and rank 0 writes the run dir."""
    run_dir = tmp_path / "slurm"
    stores = tmp_path / "stores"
    procs = []
    for rank in (0, 1):
        env = cli_env(SAEFW_STORE=str(stores), SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_NNODES="2",
                      SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_NODEID=str(rank), SLURM_JOB_NAME="saefw",
                      SLURM_JOB_ID="4242", SLURM_NODELIST="127.0.0.1", MASTER_PORT="29531")
        procs.append(spawn_cli(f"model={tiny_model}", *DDP_RUN, "arch=l1", "trainer.strategy=ddp",
                               "trainer.devices=1",
                               "trainer.num_nodes=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env,
                               log=tmp_path / f"task{rank}.log"))
    codes = [p.wait(timeout=600) for p in procs]
    logs = [(tmp_path / f"task{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    harvests = [ln for log in logs for ln in log.splitlines() if re.search(r"harvested \d+ tokens", ln)]
    assert len(harvests) == 2  # one harvest of the train split and one of the held-out split, in one task
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["rank_state"][0] == m["rank_state"][1]
    assert m["activation_store"] == "miss" and m["harvest_seconds"] > 0  # the job paid for one harvest
    assert sum(log.count("saefw run summary") for log in logs) == 1
    ddp = json.loads((ddp_runs["ddp"][0] / "metrics.json").read_text())
    assert all(d <= TOLERANCE for d in _rel(ddp, m).values())  # the same job as devices=2 on one node


def test_every_job_of_a_multirun_trains_on_two_ranks(tiny_model, tmp_path):
    """Each job starts its own ranks (python -m saefw <the job's overrides> hydra.run.dir=<the job's dir>); the
    ranks of one job are gone before the next starts (a second job must not wait for the first one's ranks)."""
    sweep = tmp_path / "sweep"
    r = run_cli("-m", f"model={tiny_model}", *DDP_RUN, "arch=l1", "total_tokens=1280",
                "trainer.strategy=ddp",
                "trainer.devices=2", "wandb.mode=disabled", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads((sweep / f"{j}_l1" / "metrics.json").read_text()) for j in (0, 1)]
    assert [m["world_size"] for m in records] == [2, 2]
    assert [m["seed"] for m in records] == [0, 1] and records[0]["l0"] != records[1]["l0"]
    assert all(m["rank_state"][0] == m["rank_state"][1] for m in records)
    assert not list(sweep.glob("*/.hydra/*rank*"))
