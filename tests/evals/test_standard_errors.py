"""Standard errors against independent computations: a jackknife over contexts (which the delta method must
match to first order) and a direct bootstrap."""
import numpy as np
import pytest
import torch

from saefw.evals.base import run_evaluators
from saefw.evals.stats import mean_se, ratio_se
from saefw.registry import build, discover


def _jackknife_ratio(a, b):
    n = len(a)
    loo = np.array([(a.sum() - a[i]) / (b.sum() - b[i]) for i in range(n)])
    return np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum())


def test_ratio_and_mean_se_against_jackknife_and_bootstrap():
    rng = np.random.default_rng(0)
    b = rng.uniform(8, 12, size=400)
    a = 0.9 * b + rng.normal(0, 0.5, size=400)
    assert ratio_se(a, b) == pytest.approx(_jackknife_ratio(a, b), rel=0.02)
    boots = [a[i].sum() / b[i].sum() for i in (rng.integers(0, 400, 400) for _ in range(4000))]
    assert ratio_se(a, b) == pytest.approx(np.std(boots), rel=0.1)
    d = rng.normal(1, 2, size=400)
    assert mean_se(d) == pytest.approx(np.std(d, ddof=1) / 20, rel=1e-12)
    assert np.isnan(ratio_se([1.0], [2.0])) and np.isnan(mean_se([1.0]))
    assert ratio_se(-a, -b) == pytest.approx(ratio_se(a, b))  # a negative denominator: still a positive SE


class _CtxSource:
    lm = None

    def __init__(self, x, per_ctx):
        self.x, self.tokens_per_context = x, per_ctx

    def eval_batches(self, batch_size):
        yield from self.x.split(3 * self.tokens_per_context)  # context-aligned batches


def test_explained_variance_se_is_the_ratio_se_over_contexts():
    discover()
    torch.manual_seed(0)
    per_ctx, n_ctx, d = 5, 40, 6
    x = torch.randn(n_ctx * per_ctx, d) * 2 + 1
    sae = build("arch", {"name": "l1"}, d_in=d, d_sae=12)
    out = run_evaluators(sae, _CtxSource(x, per_ctx), [build("evaluator", {}, name="reconstruction")])
    with torch.no_grad():
        xh = sae.decode(sae.encode(x)).double().numpy()
    xn = x.double().numpy()
    err = ((xn - xh) ** 2).sum(-1).reshape(n_ctx, per_ctx).sum(1)
    var = ((xn - xn.mean(0)) ** 2).sum(-1).reshape(n_ctx, per_ctx).sum(1)
    assert out["explained_variance"] == pytest.approx(1 - err.sum() / var.sum(), rel=1e-9)
    # SE(1 − R) = SE(R), R = Σerr / Σvar over contexts
    assert out["explained_variance_se"] == pytest.approx(_jackknife_ratio(err, var), rel=0.05)


def test_loss_recovered_se_matches_per_context_jackknife(tiny_models, tmp_path):
    from saefw.lm.model import next_token_ce
    from saefw.sources.base import RunSpec

    discover()
    src = build("source", {"name": "hf", "model": str(tiny_models["gpt2"]), "layer": 1, "site": "resid_post",
                           "context_size": 12, "eval_contexts": 24, "store_dir": str(tmp_path)},
                spec=RunSpec(seed=0, train_tokens=100))
    src.setup()
    torch.manual_seed(0)
    sae = build("arch", {"name": "l1"}, d_in=src.d_in, d_sae=64)
    out = run_evaluators(sae, src, [build("evaluator", {"batch_contexts": 5}, name="loss_recovered")])
    tok = src.eval_tokens
    with torch.no_grad():
        clean = next_token_ce(src.lm.logits(tok), tok).double().mean(-1).numpy()
        spliced = next_token_ce(src.lm.logits(tok, replace=lambda h: sae.decode(sae.encode(h))), tok)
        spliced = spliced.double().mean(-1).numpy()
        zero = next_token_ce(src.lm.logits(tok, replace=torch.zeros_like), tok).double().mean(-1).numpy()
    assert len(clean) == 24
    # the random tiny model barely uses its residual stream (ce_zero ≈ ce_clean), so the ratio is too
    # ill-conditioned for a jackknife: check the delta method itself, written out independently
    a, b = zero - spliced, zero - clean
    r = a.sum() / b.sum()
    # each CE to float32 accuracy; their ratio over a denominator that small (ce_zero − ce_clean) amplifies that
    # rounding (1e-7 in a CE is ~1e-4 of the ratio here), so the ratio itself is compared at 1e-3
    for key, ref in (("ce_clean", clean), ("ce_sae", spliced), ("ce_zero", zero)):
        assert out[key] == pytest.approx(ref.mean(), abs=1e-5)
    assert out["ce_loss_recovered"] == pytest.approx(r, rel=1e-3)
    delta = np.sqrt(np.sum((a - r * b) ** 2) / (24 * 23)) / abs(b.mean())
    assert out["ce_loss_recovered_se"] == pytest.approx(delta, rel=1e-3)
    assert out["ce_delta_se"] == pytest.approx(np.std(spliced - clean, ddof=1) / np.sqrt(24), rel=1e-3)
