import torch

from saefw.registry import build, discover
from saefw.sources.base import RunSpec


def _source(model, total_tokens=3000, seed=0, **over):
    discover()
    cfg = {"name": "hf", "context_size": 16, "forward_batch_size": 8, "buffer_tokens": 600, "eval_contexts": 4,
           **over}
    src = build("source", cfg, spec=RunSpec(model=str(model), layer=1, site="resid_post", seed=seed,
                                            total_tokens=total_tokens))
    src.setup()
    return src


def test_train_stream_serves_the_budget_in_shuffled_batches_without_bos(tiny_model):
    src = _source(tiny_model)
    batches = list(src.train_batches(100))
    assert all(b.shape == (100, src.d_in) for b in batches)
    assert len(batches) == 30  # 3000 tokens / 100
    # every served row is a non-BOS activation of some training context
    tok = src.train_tokens[:8]
    acts = src.lm.activations(tok)
    bos_row = acts[0, 0]
    served = torch.cat(batches)
    assert not any(torch.allclose(row, bos_row) for row in served[:500])


def test_eval_split_is_fixed_and_disjoint_from_training(tiny_model):
    a, b = _source(tiny_model, seed=0), _source(tiny_model, seed=1)
    assert torch.equal(a.eval_tokens, b.eval_tokens)
    ea = torch.cat(list(a.eval_batches(7)))
    assert ea.shape == (4 * 15, a.d_in)
    torch.testing.assert_close(ea, torch.cat(list(a.eval_batches(50))))
    train_rows = {tuple(r.tolist()) for r in a.train_tokens}
    assert not any(tuple(r.tolist()) in train_rows for r in a.eval_tokens)
    # a different run seed changes the order of training batches, not the split
    assert not torch.equal(next(a.train_batches(64)), next(b.train_batches(64)))


def test_budget_beyond_corpus_reuses_text(tiny_model):
    src = _source(tiny_model, total_tokens=0)
    n_train = src.train_tokens[:, 1:].numel()
    src.spec.total_tokens = n_train + 500
    served = sum(len(b) for b in src.train_batches(250))
    assert served >= n_train + 500
