"""The activation store: keys, shards, checksums, repair, resume, concurrent jobs, memory flat in the budget."""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import REPO

from saefw.errors import SaefwError
from saefw.registry import build, discover
from saefw.sources.base import RunSpec
from saefw.store.activation_store import ActivationStore, CorruptShardError, StoreKey
from saefw.store.harvest import fill_stores


def _key(**over):
    return StoreKey(**{"model": "m", "model_digest": "abc", "layer": 1, "site": "resid_post", "corpus": "c",
                       "corpus_digest": "def", "context_size": 5, "split": "train", "heldout_fraction": 0.05,
                       **over})


@pytest.mark.parametrize("dtype, tol", [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 1e-2)])
def test_shards_roundtrip_with_checksums_in_each_dtype(tmp_path, dtype, tol):
    store = ActivationStore(tmp_path, _key(dtype=dtype))
    acts, toks = torch.randn(800, 3), torch.randint(0, 9, (2, 5))
    with store.lock:
        store.write(0, acts, toks)
        store.write(1, acts * 2, toks + 1)
    m = store.manifest()
    assert [s.n_tokens for s in m.shards] == [800, 800] and m.n_contexts == 4 and m.d == 3
    torch.testing.assert_close(store.read(1), acts * 2, atol=tol * 4, rtol=tol)
    assert torch.equal(store.read_tokens(1), toks + 1)
    assert store.corrupt_shards() == []
    if dtype != "float32":  # half-precision stores take half the disk
        full = ActivationStore(tmp_path, _key(dtype="float32"))
        with full.lock:
            full.write(0, acts, toks)
        assert (store.path / "shard-00000.npy").stat().st_size < 0.75 * (full.path / "shard-00000.npy").stat().st_size


def test_key_changes_the_folder_and_a_foreign_manifest_is_refused(tmp_path):
    a, b = ActivationStore(tmp_path, _key()), ActivationStore(tmp_path, _key(model_digest="other"))
    assert a.path != b.path and a.path.parent == b.path.parent
    with a.lock:
        a.write(0, torch.randn(4, 3), torch.zeros(1, 5, dtype=torch.long))
    raw = json.loads((a.path / "manifest.json").read_text())
    raw["key"]["layer"] = 7
    (a.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(SaefwError, match="does not belong to this key"):
        a.manifest()


def test_truncated_shard_is_detected_by_checksum_never_used(tmp_path):
    store = ActivationStore(tmp_path, _key())
    with store.lock:
        store.write(0, torch.randn(8, 3), torch.zeros(2, 5, dtype=torch.long))
    path = store.path / "shard-00000.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptShardError, match=str(path)):
        store.read(0)
    assert store.corrupt_shards() == [0]


SHARD, FWD, PER_CTX = 32, 8, 15  # contexts per shard, contexts per forward, tokens per context (16 − BOS)
PER_SHARD = SHARD // FWD  # forwards per shard


def _hf(model, tmp_path, train_tokens=2000, **over):
    discover()
    cfg = {"name": "hf", "model": str(model), "layer": 1, "site": "resid_post", "context_size": 16,
           "forward_batch_size": FWD, "buffer_tokens": 600, "eval_contexts": 4, "shard_contexts": SHARD,
           "store_dir": str(tmp_path / "stores"), **over}
    return build("source", cfg, spec=RunSpec(seed=0, train_tokens=train_tokens))


def _count_forwards(source):
    calls = []
    source.lm.model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


def test_second_run_reads_and_a_corrupt_shard_is_harvested_again(tiny_model, tmp_path):
    first = _hf(tiny_model, tmp_path)
    calls = _count_forwards(first)
    first.setup()
    assert first.store_status == "miss" and calls and first.harvest_seconds > 0
    m = first.train_store.manifest()
    assert m.n_tokens >= 2000 and len(m.shards) == math.ceil(2000 / (SHARD * PER_CTX))
    served = torch.cat(list(first.train_batches(100)))

    again = _hf(tiny_model, tmp_path)
    calls = _count_forwards(again)
    again.setup()
    assert again.store_status == "hit" and not calls and again.harvest_seconds == 0
    torch.testing.assert_close(torch.cat(list(again.train_batches(100))), served)

    # a truncated shard: found by its checksum, harvested again in place (one shard's forwards), same data
    shard = again.train_store.path / "shard-00001.npy"
    good = again.train_store.read(1)
    shard.write_bytes(shard.read_bytes()[: 200])
    repaired = _hf(tiny_model, tmp_path)
    calls = _count_forwards(repaired)
    repaired.setup()
    assert len(calls) == PER_SHARD  # one shard's contexts, no more
    torch.testing.assert_close(repaired.train_store.read(1), good)

    # a bigger budget harvests only what is missing, continuing the corpus where the store ended: the short
    # last shard (2000 tokens end inside shard 4) is completed, then one more shard
    assert m.shards[-1].n_contexts < SHARD
    more = _hf(tiny_model, tmp_path, train_tokens=(len(m.shards) + 1) * SHARD * PER_CTX)
    calls = _count_forwards(more)
    more.setup()
    assert len(calls) == 2 * PER_SHARD and len(more.train_store.manifest().shards) == len(m.shards) + 1
    assert more.store_status == "miss"


def test_interrupted_harvest_resumes_after_the_last_finished_shard(tiny_model, tmp_path):
    budget = 4 * SHARD * PER_CTX
    src = _hf(tiny_model, tmp_path, train_tokens=budget)
    src.prepare_keys()
    store, = src.stores("train")
    seen = []

    def stop_in_the_third_shard(module, args):
        seen.append(1)
        if len(seen) > 2 * PER_SHARD:
            raise KeyboardInterrupt

    handle = src.lm.model.register_forward_pre_hook(stop_in_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        fill_stores(src.lm, [store], src.documents(False), budget, SHARD, FWD)
    handle.remove()
    assert len(store.manifest().shards) == 2
    calls = _count_forwards(src)
    fill_stores(src.lm, [store], src.documents(False), budget, SHARD, FWD)
    assert len(calls) == 2 * PER_SHARD and len(store.manifest().shards) == 4
    fresh = _hf(tiny_model, tmp_path / "other", train_tokens=budget)
    fresh.setup()
    for i in range(4):
        torch.testing.assert_close(store.read(i), fresh.train_store.read(i))


def test_a_split_smaller_than_asked_is_stored_whole_once(tiny_model, tmp_path):
    """Asking for more held-out tokens than the split has stores the whole split, marked complete, so the next run
    harvests nothing (it used to take the short last shard for a smaller budget and harvest it again every run)."""
    src = _hf(tiny_model, tmp_path)
    src.prepare_keys()
    store, = src.stores("heldout")
    documents = src.documents(True)
    n_contexts = sum(len(c) for c in src.lm.iter_contexts(documents(), 16, chunk=SHARD))
    too_many = (n_contexts + 5) * PER_CTX
    first = fill_stores(src.lm, [store], documents, too_many, SHARD, FWD)
    m = store.manifest()
    assert first.tokens == n_contexts * PER_CTX and m.n_contexts == n_contexts and m.exhausted
    calls = _count_forwards(src)
    again = fill_stores(src.lm, [store], documents, too_many, SHARD, FWD)
    assert again.tokens == 0 and calls == []


def test_one_harvest_fills_several_hook_points(tiny_model, tmp_path):
    src = _hf(tiny_model, tmp_path)
    src.prepare_keys()
    points = [(1, "resid_post"), (3, "mlp_out"), (0, "attn_out")]
    stores = src.stores("train", points)
    calls = _count_forwards(src)
    fill_stores(src.lm, stores, src.documents(False), 2 * SHARD * PER_CTX, SHARD, FWD)
    assert len(calls) == 2 * PER_SHARD  # one forward per batch serves all three hook points
    toks = stores[0].read_tokens(0)
    assert all(torch.equal(s.read_tokens(0), toks) for s in stores)
    for (layer, site), store in zip(points, stores):
        want = src.lm.capture(toks, [(layer, site)])[(layer, site)][:, 1:].reshape(-1, src.d_in)
        torch.testing.assert_close(store.read(0), want)


_JOB = textwrap.dedent('''
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from saefw.registry import build, discover
    from saefw.sources.base import RunSpec
    discover()
    src = build("source", {{"name": "hf", "model": {model!r}, "layer": 1, "site": "resid_post", "context_size": 16,
                           "forward_batch_size": 8, "eval_contexts": 8, "shard_contexts": 32, "buffer_tokens": 600,
                           "store_dir": {stores!r}}}, spec=RunSpec(seed=0, train_tokens=1500))
    calls = []
    src.lm.model.register_forward_pre_hook(lambda *a: calls.append(1))
    src.setup()
    x = torch.cat(list(src.train_batches(100)))
    print(json.dumps({{"forwards": len(calls), "status": src.store_status, "sum": x.double().sum().item(),
                      "first": x[0].tolist()}}))
''')


def test_two_concurrent_jobs_harvest_exactly_once_and_read_identical_activations(tiny_model, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_JOB.format(tests=str(REPO / "tests"), model=str(tiny_model), stores=str(tmp_path / "s")))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    jobs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, cwd=tmp_path) for _ in range(2)]
    outs = []
    for job in jobs:
        out, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    contexts = math.ceil(1500 / PER_CTX)  # the budget's contexts, in shards of SHARD, forwards of FWD each
    one_harvest = contexts // SHARD * PER_SHARD + math.ceil(contexts % SHARD / FWD) + 1  # + 8 held-out contexts
    assert sorted(o["forwards"] for o in outs) == [0, one_harvest]
    assert sorted(o["status"] for o in outs) == ["hit", "miss"]
    assert outs[0]["sum"] == outs[1]["sum"] and outs[0]["first"] == outs[1]["first"]


def test_a_sweep_over_layers_and_sites_harvests_once_before_its_jobs(tiny_model, tmp_path):
    """The prefetch callback fills every store of the sweep in one pass; no job harvests ("hit")."""
    from helpers import run_cli

    sweep = tmp_path / "sweep"
    r = run_cli("-m", f"model={tiny_model}", "layer=0,2", "site=resid_post,mlp_out", "total_tokens=1024",
                "train.batch_size=256", "source.context_size=16", "source.eval_contexts=4", "expansion_factor=2",
                f"source.store_dir={tmp_path / 'stores'}", "evaluators=[l0]", "wandb.mode=disabled",
                "trainer.enable_progress_bar=false", "hydra.callbacks.compare.enabled=false",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 4
    assert {(m["layer"], m["site"]) for m in records} == {(0, "resid_post"), (0, "mlp_out"), (2, "resid_post"),
                                                           (2, "mlp_out")}
    assert all(m["activation_store"] == "hit" and m["harvest_seconds"] == 0 for m in records)
    assert len([p for p in (tmp_path / "stores").glob("*_train_*") if p.is_dir()]) == 4


_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stderr.write(r.stderr[-3000:]); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
         "sys.exit(r.returncode)")


def test_memory_stays_flat_as_the_budget_grows(tmp_path):
    """Peak RSS training from 14× the shuffle buffer's tokens exceeds training from 6× by less than 40 % of the 8
    buffers' worth of rows in between (d = 512: the buffer is 32 MB, holding the store would add ~256 MB). 6×, not
    1×: the first shards step the peak up until the buffer's blocks and the heap reach their size (measured with
    keep-freed malloc on the 2-core CPU: 3× 803 MB, 4× 825, 5× 864, then flat: 6× 858, 8× 863, 12× 864, 15× 862,
    20× 861), so a lower budget measures that step, not growth with the budget."""
    from helpers import REPO, build_tiny_model

    model = build_tiny_model("llama", tmp_path / "wide", n_layers=1, hidden=512)
    buffer = 16384
    common = [f"model={model}", "layer=0", "source.context_size=64", f"source.buffer_tokens={buffer}",
              f"source.store_dir={tmp_path / 'stores'}", "source.eval_contexts=4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    h = subprocess.run([sys.executable, "-m", "saefw.store", "harvest", *common, f"total_tokens={14 * buffer}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert h.returncode == 0, h.stderr[-2000:]
    peaks = []
    for budget in (6 * buffer, 14 * buffer):
        r = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "saefw", *common,
                            f"total_tokens={budget}", "expansion_factor=2", "evaluators=[l0]", "wandb.mode=disabled",
                            "train.eval_every_steps=0", "trainer.enable_progress_bar=false",
                            f"hydra.run.dir={tmp_path / str(budget)}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        record = json.loads((tmp_path / str(budget) / "metrics.json").read_text())
        assert record["activation_store"] == "hit" and record["tokens"] == budget // 1024 * 1024, (budget, record)
        peaks.append(int(r.stdout.strip().splitlines()[-1]))
    buffer_kb = buffer * 512 * 4 / 1024
    assert peaks[1] - peaks[0] <= 0.4 * 8 * buffer_kb, peaks
