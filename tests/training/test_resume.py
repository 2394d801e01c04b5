"""Resuming a killed run through the real CLI: the same final metrics, the same tokens in the same order (none
twice, none missed), the same W&B run, the evaluation history and the CSV log kept."""
import csv
import json
import os
import re
import signal
import time

import pytest
from helpers import install_ledger, read_ledger, run_cli, spawn_cli

# 120 steps of 64 tokens; shards of 8 contexts (248 tokens) and a 1,024-token shuffle buffer, so the batches
# skipped on resume span several shards and buffer fills
RESUME_RUN = ["layer=1", "total_tokens=7680", "train.batch_size=64", "train.eval_every_steps=40",
              "train.checkpoint_every_steps=20", "source.context_size=32", "source.eval_contexts=6",
              "source.buffer_tokens=1024", "source.shard_contexts=8", "expansion_factor=4",
              "train.dead_window_tokens=640", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5"]
STEPS = 120
COMPARED = ("l0", "explained_variance", "mse", "ce_loss_recovered", "ce_sae", "kl_div", "dead_fraction",
            "shrinkage", "final_coefficient")


def _csv_steps(run_dir):
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [int(r["step"]) for r in rows if r.get("train/loss")]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """An uninterrupted run, and the same run SIGKILLed after its 2nd checkpoint and resumed."""
    tmp = tmp_path_factory.mktemp("resume")
    ledger_args, _ = install_ledger(tmp, "ledger_full")
    full = tmp / "full"
    r = run_cli(f"model={tiny_model}", *RESUME_RUN, *ledger_args, f"hydra.run.dir={full}", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]

    ledger_args, ledger = install_ledger(tmp, "ledger_killed")
    killed = tmp / "killed"
    args = [f"model={tiny_model}", *RESUME_RUN, *ledger_args, f"hydra.run.dir={killed}"]
    proc = spawn_cli(*args, cwd=tmp, log=tmp / "killed.log")
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-00000040.ckpt").exists():
        assert proc.poll() is None, (tmp / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no second checkpoint within 300 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its children, as a scheduler or the OOM killer of a cgroup
    proc.wait()
    steps_before_kill = len(read_ledger(ledger))
    assert proc.returncode == -signal.SIGKILL and not (killed / "metrics.json").exists()
    assert steps_before_kill < STEPS, "the run finished before it could be killed"
    wandb_before = {p.name for p in (killed / "wandb").glob("offline-run-*")}

    resumed = run_cli(*args, cwd=tmp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"full": full, "killed": killed, "resumed": resumed, "ledger_full": tmp / "ledger_full",
            "ledger": ledger, "steps_before_kill": steps_before_kill, "wandb_before": wandb_before}


def test_resumed_run_matches_the_uninterrupted_run(runs):
    a = json.loads((runs["full"] / "metrics.json").read_text())
    b = json.loads((runs["killed"] / "metrics.json").read_text())
    m = re.search(r"resuming from (\S+)step-(\d+)\.ckpt \(step (\d+) of 120\)", runs["resumed"].stdout)
    assert m and int(m.group(2)) == int(m.group(3)) >= 40 and b["resumed_from"] == int(m.group(3))
    diffs = {k: abs(b[k] - a[k]) / max(abs(a[k]), 1e-12) for k in COMPARED}
    print("relative differences, resumed vs uninterrupted:", diffs)
    assert all(d <= 0.01 for d in diffs.values()), diffs
    assert a["tokens_trained"] == b["tokens_trained"] == STEPS * 64 and a["steps"] == b["steps"] == STEPS
    # the evaluation history from before the kill came back from the checkpoint
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [40, 80, 120]


def test_every_batch_trained_on_once_in_the_same_order(runs):
    full = read_ledger(runs["ledger_full"])
    both = read_ledger(runs["ledger"])
    killed_pid = both[0]["pid"]
    before = [e for e in both if e["pid"] == killed_pid]
    after = [e for e in both if e["pid"] != killed_pid]
    start = int(re.search(r"\(step (\d+) of", runs["resumed"].stdout).group(1))
    assert len(before) == runs["steps_before_kill"] >= start
    # what the resumed run trained on: the batches before its checkpoint, then its own
    effective = [e["batch"] for e in before[:start]] + [e["batch"] for e in after]
    assert len(full) == len(effective) == STEPS
    assert effective == [e["batch"] for e in full]  # same batches, same order: none twice, none skipped
    assert len(set(effective)) == STEPS
    # the steps redone after the checkpoint are exactly those the killed run did after it
    assert [e["batch"] for e in after[: len(before) - start]] == [e["batch"] for e in before[start:]]


def test_resume_keeps_the_wandb_run_and_the_csv_log(runs):
    killed = runs["killed"]
    offline = sorted(p.name for p in (killed / "wandb").glob("offline-run-*"))
    # ≥ 2: a start attempt that waited for the killed run's W&B service to let go of the id leaves a folder too
    assert len(offline) >= 2 and set(runs["wandb_before"]) < set(offline)
    assert len({name.rsplit("-", 1)[1] for name in offline}) == 1  # one W&B run id, continued offline
    # every logged step once, in order: the train row of the checkpoint's own last step too (Lightning writes it
    # after that step's on_train_batch_end, so the checkpoint is saved when the next batch starts, after it)
    assert _csv_steps(killed) == _csv_steps(runs["full"])
    ckpts = sorted(p.name for p in (killed / "checkpoints").glob("step-*.ckpt"))
    assert ckpts == ["step-00000100.ckpt", "step-00000120.ckpt"]  # the newest two
    assert (killed / "checkpoints" / "last.ckpt").resolve().name == "step-00000120.ckpt"


def test_rerunning_a_finished_run_resumes_at_its_end_and_resume_false_starts_over(runs, tiny_model, tmp_path):
    import shutil

    done = tmp_path / "done"
    shutil.copytree(runs["full"], done)
    install_ledger(tmp_path)  # the plugin, found in the working directory
    ledger = runs["ledger_full"]  # the same arch options as the finished run (its ledger folder included)
    before = len(read_ledger(ledger))
    args = [f"model={tiny_model}", *RESUME_RUN, "arch=ledger_l1", f"arch.ledger_dir={ledger}",
            f"hydra.run.dir={done}", "wandb.mode=disabled"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from {done}/checkpoints/step-00000120.ckpt (step 120 of 120)" in r.stdout
    assert len(read_ledger(ledger)) == before  # nothing trained again: evaluated only
    full = json.loads((runs["full"] / "metrics.json").read_text())
    assert json.loads((done / "metrics.json").read_text())["l0"] == full["l0"]
    r = run_cli(*args, "resume=false", "total_tokens=1280", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resume=false: removed 2 checkpoint(s) of an earlier attempt" in r.stdout
    assert len(read_ledger(ledger)) == before + 20


def test_resume_true_without_a_checkpoint_and_a_changed_budget_are_errors(runs, tiny_model, tmp_path):
    r = run_cli(f"model={tiny_model}", *RESUME_RUN, "resume=true", f"hydra.run.dir={tmp_path / 'new'}",
                "wandb.mode=disabled", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: resume=true but {tmp_path / 'new'}/checkpoints holds no checkpoint" in r.stderr
    import shutil

    other = tmp_path / "other"
    shutil.copytree(runs["full"], other)
    r = run_cli(f"model={tiny_model}", *RESUME_RUN, "total_tokens=6400", "arch=l1", f"hydra.run.dir={other}",
                "wandb.mode=disabled", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    assert line.startswith(f"error: cannot resume from {other}/checkpoints/step-00000120.ckpt: it was trained "
                           f"with arch='ledger_l1' (this run: 'l1'), steps=120 (this run: 100)")


def test_a_changed_training_setting_is_not_resumed(runs, tiny_model, tmp_path):
    """Re-running a finished run's command with another lr (or target, penalty, arch option) in its dir is a new
    run, not a resume: refused, naming the setting."""
    import shutil

    install_ledger(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(runs["full"], other)
    r = run_cli(f"model={tiny_model}", *RESUME_RUN, "arch=ledger_l1", f"arch.ledger_dir={runs['ledger_full']}",
                "train.lr=0.01", f"hydra.run.dir={other}", "wandb.mode=disabled", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    assert line.startswith(f"error: cannot resume from {other}/checkpoints/step-00000120.ckpt: it was trained "
                           f"with train.lr=0.001 (this run: 0.01)"), line
