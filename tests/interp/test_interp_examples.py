"""Which windows the explainer and the scorers see, from a hand-made feature store."""
import random

import torch

from saefw.features.feature_store import FeatureData
from saefw.interp.examples import (
    Example,
    interleave,
    random_windows,
    split_examples,
    store_examples,
)


def text(ids):
    return [f"t{i}" for i in ids]


def tiny_store() -> FeatureData:
    """One feature, 3 contexts of 5 tokens (BOS = 0), window 1 before / 1 after; 2 top slots (one empty) and
    2 quantile ranges of 1 sample each (the lower one empty)."""
    tokens = torch.tensor([[0, 11, 12, 13, 14], [0, 21, 22, 23, 24], [0, 31, 32, 33, 34]], dtype=torch.int32)
    top = {"value": torch.tensor([[3.0, 0.0]]), "context": torch.tensor([[1, -1]]),
           "position": torch.tensor([[2, 0]]), "acts": torch.tensor([[[1.0, 3.0, 0.0], [0, 0, 0]]])}
    quant = {"edges": torch.tensor([[0.0, 1.0, 3.0]]), "value": torch.tensor([[[float("nan")], [2.0]]]),
             "context": torch.tensor([[[-1], [2]]]), "position": torch.tensor([[[-1], [4]]]),
             "acts": torch.tensor([[[[0.0, 0, 0]], [[0.5, 2.0, 0.0]]]])}
    meta = {"window": {"before": 1, "after": 1, "max_index": 1}, "dead": [], "dense": []}
    return FeatureData(meta=meta, tokens=tokens, stats={"fired": torch.tensor([3])}, top=top, quantiles=quant,
                       logit_lens={})


def test_store_examples_read_windows_and_drop_empty_slots():
    top, quantile = store_examples(tiny_store(), 0, text)
    assert top == [Example(("t21", "t22", "t23"), (1.0, 3.0, 0.0), 1, 2, "top")]
    # the window at the end of context 2 loses its token past the end (−1), with its activation
    assert quantile == [Example(("t33", "t34"), (0.5, 2.0), 2, 4, "quantile")]


def ex(c, p, kind="top"):
    return Example(("x",), (1.0,), c, p, kind)


def test_split_keeps_scorer_windows_apart_from_the_explainer():
    top = [ex(c, 1) for c in range(6)]
    quantile = [ex(0, 1, "quantile"), ex(7, 2, "quantile"), ex(8, 3, "quantile")]  # (0, 1) repeats a top window
    quiet = [ex(20 + k, 1, "random") for k in range(5)]
    anywhere = [ex(30 + k, 1, "random") for k in range(5)]
    s = split_examples(top, quantile, quiet, anywhere, n_explain=3, n_positive=4, n_negative=2, n_sim_positive=1,
                       n_sim_random=2)
    assert [e.key for e in s.explain] == [(0, 1), (1, 1), (2, 1)]
    # positives alternate quantile samples and the remaining top contexts, skipping what the explainer saw
    assert [e.key for e in s.positives] == [(3, 1), (7, 2), (4, 1), (8, 3)]
    assert [e.key for e in s.negatives] == [(20, 1), (21, 1)]
    assert [e.key for e in s.simulation] == [(3, 1), (30, 1), (31, 1)]
    assert s.refs()["negatives"] == [[20, 1, "random"], [21, 1, "random"]]
    assert interleave([1, 2, 3], ["a"]) == [1, "a", 2, 3]
    # with quantile samples for the explainer: (0, 1) is already a top window, (7, 2) is new
    s = split_examples(top, quantile, quiet, anywhere, n_explain=3, n_positive=3, n_negative=0, n_sim_positive=0,
                       n_sim_random=0, n_explain_quantile=2)
    assert [e.key for e in s.explain] == [(0, 1), (1, 1), (2, 1), (7, 2)]
    assert [e.key for e in s.positives] == [(8, 3), (3, 1), (4, 1)]


def test_random_windows_find_quiet_windows_with_true_activations():
    tokens = torch.arange(20).view(2, 10)
    f = torch.zeros(2, 10)
    f[0, 5] = 2.0  # the feature fires once, at row 0 position 5
    quiet, anywhere = random_windows(f, tokens, [7, 9], before=2, after=1, token_text=text, rng=random.Random(0),
                                     n_quiet=6, n_any=3)
    assert len(quiet) == 6 and len(anywhere) == 3
    for e in quiet:  # never within reach of the firing token, and never at BOS
        assert all(a == 0 for a in e.acts) and not (e.context == 7 and 4 <= e.position <= 7)
        assert "t0" not in e.tokens and "t10" not in e.tokens
    for e in quiet + anywhere:
        row = 0 if e.context == 7 else 1
        lo, hi = max(1, e.position - 2), min(10, e.position + 2)
        assert e.tokens == tuple(f"t{i}" for i in tokens[row, lo:hi].tolist())
        assert e.acts == tuple(f[row, lo:hi].tolist())
    assert len({e.key for e in quiet + anywhere}) == 9  # all different
