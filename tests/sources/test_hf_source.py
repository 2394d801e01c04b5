import pytest
import torch

from saefw.errors import SaefwError
from saefw.registry import build, discover
from saefw.sources.base import RunSpec
from saefw.sources.hf import resolve_store_dtype


def _source(model, total_tokens=3000, seed=0, **over):
    discover()
    cfg = {"name": "hf", "model": str(model), "layer": 1, "site": "resid_post", "context_size": 16,
           "forward_batch_size": 8, "buffer_tokens": 600, "eval_contexts": 4, "shard_contexts": 16, **over}
    src = build("source", cfg, spec=RunSpec(seed=seed, train_tokens=total_tokens))
    src.setup()
    return src


def _train_contexts(src):
    m = src.train_store.manifest()
    return torch.cat([src.train_store.read_tokens(i, m) for i in range(len(m.shards))])


def test_train_stream_serves_the_budget_in_shuffled_batches_without_bos(tiny_model):
    src = _source(tiny_model)
    batches = list(src.train_batches(100))
    assert all(b.shape == (100, src.d_in) for b in batches)
    assert len(batches) == 30  # 3000 tokens / 100
    # every served row is a non-BOS activation of some training context
    tok = _train_contexts(src)[:8]
    acts = src.lm.activations(tok)
    bos_row = acts[0, 0]
    served = torch.cat(batches)
    assert not any(torch.allclose(row, bos_row) for row in served[:500])
    # and the rows are the model's activations of the stored contexts, shuffled
    stored = src.lm.activations(_train_contexts(src))[:, 1:].reshape(-1, src.d_in)
    first = served[0]
    assert ((stored - first).abs().max(-1).values < 1e-5).any()


def test_eval_split_is_fixed_and_disjoint_from_training(tiny_model):
    a, b = _source(tiny_model, seed=0), _source(tiny_model, seed=1)
    assert torch.equal(a.eval_tokens, b.eval_tokens)
    ea = torch.cat(list(a.eval_batches(7)))
    assert ea.shape == (4 * 15, a.d_in)
    torch.testing.assert_close(ea, torch.cat(list(a.eval_batches(50))))
    torch.testing.assert_close(ea, a.lm.activations(a.eval_tokens)[:, 1:].reshape(-1, a.d_in))
    # held-out batches hold whole contexts (15 rows each), so per-context statistics are possible
    assert all(len(x) % 15 == 0 for x in a.eval_batches(40))
    train_rows = {tuple(r.tolist()) for r in _train_contexts(a)}
    assert not any(tuple(r.tolist()) in train_rows for r in a.eval_tokens)
    # a different run seed changes the order of training batches, not the split
    assert not torch.equal(next(a.train_batches(64)), next(b.train_batches(64)))


def test_budget_beyond_corpus_reuses_text(tiny_model, tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(f"the country number {i} has a border and a coast line and some people"
                                     for i in range(60)))
    src = _source(tiny_model, total_tokens=10**7, corpus=str(corpus), eval_doc_fraction=0.1)
    m = src.train_store.manifest()
    assert m.exhausted and 0 < m.n_tokens < 10**7
    src.spec.train_tokens = m.n_tokens + 500
    served = sum(len(b) for b in src.train_batches(250))
    assert served == (m.n_tokens + 500) // 250 * 250


def test_live_mode_serves_the_same_activations_without_a_store(tiny_model):
    live = _source(tiny_model, store=False)
    assert live.store_status == "off"
    stored = _source(tiny_model)
    torch.testing.assert_close(torch.cat(list(live.eval_batches(64))), torch.cat(list(stored.eval_batches(64))))
    assert len(list(live.train_batches(100))) == 30


def test_resumed_and_sharded_streams_are_slices_of_the_one_process_stream(tiny_model, monkeypatch):
    """``train_batches(skip=k, part=(r, n))``: batch k onwards of the plain stream, rank r's n-th of each; the
    store shards whose rows were all served before the resume point are never read."""
    for store in (True, False):
        src = _source(tiny_model, total_tokens=5000, store=store)
        full = list(src.train_batches(100))
        assert len(full) == 50
        for skip in (1, 13, 27, 49, 50):
            resumed = list(src.train_batches(100, skip=skip))
            assert len(resumed) == 50 - skip and all(torch.equal(a, b) for a, b in zip(resumed, full[skip:]))
        halves = [list(src.train_batches(100, skip=5, part=(r, 2))) for r in (0, 1)]
        assert all(torch.equal(torch.cat([a, b]), whole) for a, b, whole in zip(*halves, full[5:]))
    reads = []
    src = _source(tiny_model, total_tokens=5000, context_size=12, shard_contexts=4)  # 44-token shards: many
    original = type(src.train_store).read
    monkeypatch.setattr(type(src.train_store), "read", lambda self, i, m=None: reads.append(i) or original(self, i, m))
    list(src.train_batches(100))
    n_shards = len(reads)
    reads.clear()
    list(src.train_batches(100, skip=45))
    print(f"resuming at batch 45 of 50 read {len(reads)} of {n_shards} shards")
    assert len(reads) == len(set(reads)) and len(reads) < n_shards / 2


def test_store_dtype_auto_is_bfloat16_on_a_gpu_and_float32_on_the_cpu(tiny_model):
    assert resolve_store_dtype("auto", "cuda:1") == "bfloat16"
    assert resolve_store_dtype("auto", "cpu") == "float32"
    assert resolve_store_dtype("float16", "cuda:0") == "float16"  # an explicit choice is kept on any device
    with pytest.raises(SaefwError, match=r"source.store_dtype='fp8' is invalid; choices: auto, float32"):
        resolve_store_dtype("fp8", "cpu")
    # the default (auto) on this CPU: the store's key, and so its folder, is float32's
    src = _source(tiny_model)
    assert src.store_dtype == "float32" and src.store_key("train").dtype == "float32"
