"""Many SAEs from one pass (``hydra/launcher=one_pass``) through the real CLI on the tiny Llama: three jobs trained
on batches read once equal the same three jobs run one after another by Hydra's basic launcher; jobs made to
diverge are recorded failed while the others finish with the same metrics; a group SIGKILLed mid-training resumes
every job from its own checkpoints.

The CLI runs under a small wrapper that counts the activation store's shard reads per split and the live forwards
(and, when asked, SIGKILLs its own process once every job of the group has written a checkpoint)."""
import json
import math
import re
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import _cli_env, read_csv

from saefw.training import shared_batches

# 64 steps of 64 tokens; shards of 8 contexts (248 tokens), so the budget spans 17 shards of the store
RUN = ["layer=1", "total_tokens=4096", "train.batch_size=64", "source.context_size=32", "source.eval_contexts=4",
       "source.shard_contexts=8", "source.buffer_tokens=1024", "expansion_factor=4",
       "trainer.enable_progress_bar=false", "train.checkpoint_every_steps=8", "train.lr_warmup_steps=4"]
STEPS = 64
ARCHS = ["0_topk", "1_l1", "2_jumprelu"]
LIVE = ["3_topk", "4_l1", "5_jumprelu"]  # source.store=false: harvested live
COMPARED = ("l0", "mse", "explained_variance", "ce_loss_recovered", "ce_sae", "kl_div", "dead_fraction",
            "shrinkage", "final_coefficient", "tokens_trained")

RUNNER = r"""
import collections, json, os, signal, sys
from saefw.sources import hf
from saefw.training import checkpoint

reads = collections.Counter()  # shards read to serve batches (not the checksum check of every run's setup)
read = hf.HFActivationSource._read_rows
def counted(self, stores, manifests, i):
    reads["train" if stores is self.train_stores else "heldout"] += 1
    return read(self, stores, manifests, i)
hf.HFActivationSource._read_rows = counted
harvest = hf.HFActivationSource._harvest
def counted_harvest(self, contexts):  # live mode (source.store=false): the model's forward of training text
    reads["live"] += 1
    return harvest(self, contexts)
hf.HFActivationSource._harvest = counted_harvest
live_rows = hf.HFActivationSource._live_rows
def counted_live_rows(self, *args):  # every live forward: training text and the held-out split
    reads["live_rows"] += 1
    return live_rows(self, *args)
hf.HFActivationSource._live_rows = counted_live_rows

kill_at = int(os.environ.get("KILL_AT", "0"))
saved, save = {}, checkpoint.Checkpointer.save
def save_then_maybe_die(self, trainer):
    save(self, trainer)
    saved[str(self.folder)] = trainer.global_step
    if kill_at and len(saved) == 3 and min(saved.values()) >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # the whole group's process, mid-training
if kill_at:
    checkpoint.Checkpointer.save = save_then_maybe_die

def write():
    with open(os.environ["READS_OUT"], "w") as fh:
        json.dump(reads, fh)
import atexit
atexit.register(write)
sys.argv[0] = "saefw"
from saefw.training.command import main
main()
"""


def _start(tmp, name, *args, kill_at=0, threads=1):
    """A multirun under the counting wrapper, started in the background."""
    env = {**_cli_env(), "READS_OUT": str(tmp / f"{name}.reads.json"), "KILL_AT": str(kill_at),
           "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-c", RUNNER, "-m", *RUN, *args, f"hydra.sweep.dir={tmp / name}"],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, tmp, name):
    """(completed process, sweep dir, shard reads by split) of a multirun from :func:`_start`."""
    out, err = proc.communicate(timeout=600)
    reads = tmp / f"{name}.reads.json"
    return (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), tmp / name,
            json.loads(reads.read_text()) if reads.is_file() else None)


@pytest.fixture(scope="module")
def sweeps(tiny_model, tmp_path_factory):
    """Four multiruns at once (their interpreter start-ups overlap): the three archs read from the store and
    harvested live (``source.store=true,false``: six jobs) run one after another by Hydra's basic launcher, each job
    reading its batches itself; the same six jobs in one pass (two groups: store and live); six jobs in one pass
    from the store, three of them with an absurd lr; and the three in one pass, SIGKILLed once every job wrote its
    step-16 checkpoint — then rerun to resume."""
    tmp = tmp_path_factory.mktemp("one_pass")
    model, archs, one_pass = f"model={tiny_model}", "arch=topk,l1,jumprelu", "hydra/launcher=one_pass"
    quiet = ["wandb.mode=disabled", "hydra.callbacks.compare.enabled=false"]
    procs = {"separate": _start(tmp, "separate", model, "source.store=true,false", archs, *quiet),
             "one_pass": _start(tmp, "one_pass", model, "source.store=true,false", archs, one_pass,
                                "wandb.mode=disabled"),
             "diverging": _start(tmp, "diverging", model, archs, "train.lr=1e-3,1e30", one_pass,
                                 "wandb.mode=offline", "hydra.callbacks.compare.enabled=false"),
             "killed": _start(tmp, "killed", model, archs, one_pass, *quiet, kill_at=16)}
    done = {name: _finish(p, tmp, name) for name, p in procs.items()}
    killed = done["killed"][1]
    done["killed_state"] = {"returncode": done["killed"][0].returncode,
                            "metrics": sorted(p.parent.name for p in killed.glob("*/metrics.json")),
                            "checkpoints": {j: sorted(p.name for p in (killed / j / "checkpoints").glob("step-*"))
                                            for j in ARCHS}}
    done["resumed"] = _finish(_start(tmp, "killed", model, archs, one_pass, *quiet, threads=2), tmp, "killed")
    return done


def _metrics(job_dir):
    return json.loads((job_dir / "metrics.json").read_text())


def _assert_same(a, b, rel=1e-4):
    diffs = {k: (a[k], b[k]) for k in COMPARED
             if not math.isclose(a[k], b[k], rel_tol=rel, abs_tol=rel)}
    assert not diffs, diffs


def test_one_pass_equals_separate_runs_and_reads_the_batches_once(sweeps):
    _, base, base_reads = sweeps["separate"]
    r, sweep, reads = sweeps["one_pass"]
    assert r.returncode == 0, r.stderr[-3000:]
    for job in ARCHS + LIVE:
        a, b = _metrics(base / job), _metrics(sweep / job)
        assert "status" not in b and b["steps"] == STEPS and b["tokens_trained"] == STEPS * 64
        assert b["activation_store"] == ("off" if job in LIVE else "hit") == a["activation_store"]
        _assert_same(a, b)
        # the job dirs compare reads: the job's overrides and its number
        assert (sweep / job / ".hydra" / "overrides.yaml").is_file() and (sweep / job / "checkpoints").is_dir()
    assert [x["job"] for x in read_csv(sweep / "tradeoff.csv")] == ARCHS + LIVE
    # the store's training split was read once for the three jobs, not once per job; the live jobs' training text
    # went through the model once
    assert base_reads["train"] == 3 * reads["train"] > 0 and base_reads["live"] == 3 * reads["live"] > 0
    # and the held-out split's activations were read (store) and computed (live) once for each group's three jobs
    assert base_reads["heldout"] == 3 * reads["heldout"] > 0 and base_reads["live_rows"] == 3 * reads["live_rows"]
    groups = json.loads((sweep / "one_pass.json").read_text())["groups"]
    assert [g["jobs"] for g in groups] == [[0, 1, 2], [3, 4, 5]]
    for g in groups:
        assert g["shared"] and g["streams_opened"] == 1 and g["batches_read"] == STEPS
        assert {m["served"] for m in g["members"].values()} == {STEPS}
        assert all(m["waited_for_evaluation_seconds"] >= 0 for m in g["members"].values())
    for jobs in ("[0, 1, 2]", "[3, 4, 5]"):
        assert f"one pass: jobs {jobs} trained on the same batches, read once (64 batches read for 3 jobs)" in (
            r.stdout + r.stderr)


def test_diverging_jobs_fail_alone(sweeps):
    """Six jobs in one group; the three with an absurd lr diverge (NaN loss) and are recorded failed, the other
    three finish as if they had run alone."""
    _, base, _ = sweeps["separate"]
    r, sweep, reads = sweeps["diverging"]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["0_topk", "1_topk", "2_l1", "3_l1", "4_jumprelu", "5_jumprelu"]
    failed = [j for j in jobs if _metrics(sweep / j).get("status") == "failed"]
    assert failed == ["1_topk", "3_l1", "5_jumprelu"]
    for job in failed:
        assert "training diverged" in _metrics(sweep / job)["error"]
        # each job's log file holds its own job's records (Hydra sets the process's logging up per job)
        log = (sweep / job / "saefw.log").read_text()
        num = job.split("_")[0]
        assert f"job {num} failed" in log and len(re.findall(r"job \d failed", log)) == 1, (job, log)
    line = re.search(r"error: 3 of 6 jobs failed: (.*)", r.stderr)  # (a progress bar may share its line)
    assert line and sorted(line.group(1).strip().split(", ")) == [str(sweep / j) for j in failed], r.stderr[-3000:]
    for ok, alone in zip(["0_topk", "2_l1", "4_jumprelu"], ARCHS):
        _assert_same(_metrics(base / alone), _metrics(sweep / ok))
    group = json.loads((sweep / "one_pass.json").read_text())["groups"][0]
    assert group["batches_read"] == STEPS and group["streams_opened"] == 1
    # every job logged to a W&B run of its own (the failed ones too), tagged with its own arch
    for job in jobs:
        runs = list((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, job
        assert re.findall(rb"arch:[a-z0-9]+", runs[0].read_bytes()) == [f"arch:{job.split('_')[1]}".encode()]
    assert len({p.name for p in sweep.glob("*/wandb/offline-run-*")}) == 6


def test_group_resumes_after_sigkill(sweeps):
    _, base, _ = sweeps["separate"]
    state = sweeps["killed_state"]
    assert state["returncode"] == -9, sweeps["killed"][0].stderr[-3000:]
    assert state["metrics"] == []  # killed mid-training: no job finished
    assert all(state["checkpoints"][j] for j in ARCHS), state
    r, sweep, _ = sweeps["resumed"]
    assert r.returncode == 0, r.stderr[-3000:]
    for job in ARCHS:
        b = _metrics(sweep / job)
        assert b["resumed_from"] >= 16 and b["tokens_trained"] == STEPS * 64, (job, b.get("resumed_from"))
        _assert_same(_metrics(base / job), b, rel=0.01)  # the tolerance of a resumed run (training/test_resume)
    group = json.loads((sweep / "one_pass.json").read_text())["groups"][0]
    # the stream started at the earliest checkpoint, and each job skipped to its own
    start = min(_metrics(sweep / j)["resumed_from"] for j in ARCHS)
    assert group["batches_read"] == STEPS - start + min(4, start)  # + the head (init batches), read first
    served = {str(i): STEPS - _metrics(sweep / j)["resumed_from"] for i, j in enumerate(ARCHS)}
    assert {k: m["served"] for k, m in group["members"].items()} == served


class _Source:
    """A source whose ``train_batches`` counts what it serves: batch i is a [2, 3] tensor filled with i."""

    def __init__(self, n: int):
        self.n, self.served, self.opened = n, 0, []

    def train_batches(self, batch_size, skip=0, part=(0, 1)):
        self.opened.append(skip)
        for i in range(skip, self.n):
            self.served += 1
            yield torch.full((batch_size, 3), float(i))


def _train(member, source, skip, steps, out, fail_at=None, delay=0.0):
    """A member's run: its head, then its stream (raising at ``fail_at``, as a diverged run does)."""
    shared_batches.enter(member)
    try:
        out["head"] = [int(b[0, 0]) for b in member.head(source, 2, 2)]
        got = out.setdefault("got", [])
        for b in member.stream(source, 2, skip, steps):
            if len(got) == fail_at:
                raise RuntimeError("diverged")
            got.append(int(b[0, 0]))
            time.sleep(delay)
    except RuntimeError:
        out["failed"] = True
    finally:
        member.leave()
        shared_batches.enter(None)


def _group(n_members, source, steps=20, lag=3, skips=None, fail=None, delays=None):
    feed = shared_batches.SharedBatches(lag)
    members = [feed.member(i) for i in range(n_members)]
    outs = [{} for _ in members]
    threads = []
    for i, m in enumerate(members):  # one setup at a time, as the launcher does
        t = threading.Thread(target=_train, args=(m, source, (skips or [0] * n_members)[i], steps, outs[i],
                                                  (fail or {}).get(i), (delays or {}).get(i, 0.0)), daemon=True)
        threads.append(t)
        t.start()
        assert m.ready.wait(10)
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    return feed, outs


def test_shared_batches_read_once_and_served_to_each():
    source = _Source(20)
    feed, outs = _group(3, source, delays={1: 0.002})
    assert [o["got"] for o in outs] == [list(range(20))] * 3 and [o["head"] for o in outs] == [[0, 1]] * 3
    assert source.served == 20 and source.opened == [0] and feed.batches_read == 20


def test_shared_batches_a_failing_member_leaves_the_others_go_on():
    source = _Source(20)
    _, outs = _group(3, source, fail={0: 5, 2: 0})  # lag 3: the others would wait for a member that never reads
    assert outs[0]["got"] == list(range(5)) and outs[0]["failed"] and outs[2]["failed"]
    assert outs[1]["got"] == list(range(20)) and source.served == 20


def test_shared_batches_resumed_members_skip_to_their_own_step():
    source = _Source(20)
    feed, outs = _group(3, source, skips=[12, 8, 20])  # 20: a finished run (evaluated only)
    assert [o["got"] for o in outs] == [list(range(12, 20)), list(range(8, 20)), []]
    assert [o["head"] for o in outs] == [[0, 1]] * 3  # the init batches are still the first two
    assert source.opened == [0, 8] and source.served == 2 + 12


def test_shared_batches_hold_at_most_lag_batches_ahead():
    source = _Source(40)
    feed = shared_batches.SharedBatches(lag=4)
    fast, slow = feed.member("fast"), feed.member("slow")
    seen = []

    def run_fast():
        for _ in fast.stream(source, 2, 0, 40):
            seen.append(feed._produced - slow.cursor)

    t = threading.Thread(target=run_fast, daemon=True)
    t.start()
    it = slow.stream(source, 2, 0, 40)
    for _ in range(40):
        next(it)
        time.sleep(0.001)
    t.join(10)
    assert len(seen) == 40 and max(seen) <= 4


def test_members_evaluate_one_at_a_time_and_none_waits_forever():
    """Three members evaluate every 4 batches (and at the end) while the others train: never two evaluations at
    once, every member gets every batch, and the waits are counted on the members that waited."""
    source = _Source(24)
    feed = shared_batches.SharedBatches(lag=2)
    members = [feed.member(i) for i in range(3)]
    state = {"now": 0, "most": 0}
    lock = threading.Lock()
    got = {i: [] for i in range(3)}

    def evaluate():
        with shared_batches.evaluation_turn():
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.02)
            with lock:
                state["now"] -= 1

    def run(i, m):
        shared_batches.enter(m)
        try:
            for b in m.stream(source, 2, 0, 24):
                got[i].append(int(b[0, 0]))
                if len(got[i]) % 4 == 0:
                    evaluate()
            evaluate()  # the final evaluation, after the member left the stream
        finally:
            shared_batches.enter(None)

    threads = [threading.Thread(target=run, args=(i, m), daemon=True) for i, m in enumerate(members)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert state["most"] == 1 and all(g == list(range(24)) for g in got.values())
    assert sum(m.waited_seconds for m in members) >= 0.02  # 21 evaluations of 20 ms in turn: someone waited
    assert all("waited_for_evaluation_seconds" in m for m in feed.report()["members"].values())
    t0 = time.perf_counter()
    with shared_batches.evaluation_turn():  # outside a group: no turn to wait for
        assert time.perf_counter() - t0 < 1


def _composed(*overrides, hydra=False):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from saefw.app.conf import conf_dir
    from saefw.registry import discover
    from saefw.training.config import register_schema

    register_schema()
    discover()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()


def test_jobs_share_a_group_only_when_they_read_the_same_batches():
    from saefw.sweeps.one_pass import batch_key

    base = batch_key(_composed())
    assert base is not None
    # the SAE's own settings: the same batches
    for same in (["arch=l1", "penalty.coefficient=3"], ["arch=jumprelu", "target_l0=16", "expansion_factor=16",
                                                         "train.lr=3e-4"]):
        assert batch_key(_composed(*same)) == base, same
    # what the batches depend on: another group
    for other in (["layer=5"], ["seed=1"], ["total_tokens=600000"], ["train.batch_size=512"], ["source.store=false"],
                  ["+trainer.max_steps=10"]):
        assert batch_key(_composed(*other)) not in (base, None), other
    # several devices, or a working dir of its own (the process has one): each job runs on its own
    assert batch_key(_composed("trainer.devices=2", "trainer.strategy=ddp")) is None
    assert batch_key(_composed("hydra.job.chdir=true", hydra=True)) is None
    assert batch_key(_composed(hydra=True)) == base
