"""Each evaluator against an independent computation."""
import numpy as np
import pytest
import torch

from saefw.evals.base import run_evaluators
from saefw.registry import build, discover


class _Src:
    lm = None
    ground_truth = None

    def __init__(self, x, chunk=37):
        self.x, self.chunk = x, chunk

    def eval_batches(self, batch_size):
        yield from self.x.split(self.chunk)  # uneven chunks: the streaming sums must not care


def _sae(d_in=6, d_sae=10, seed=0):
    discover()
    torch.manual_seed(seed)
    sae = build("arch", {"name": "l1"}, d_in=d_in, d_sae=d_sae)
    with torch.no_grad():
        sae.b_enc.fill_(-0.3)
        sae.b_enc[3] = -100.0  # latent 3 never fires
    return sae


def _evaluate(names, x, sae):
    evs = [build("evaluator", {}, name=n) for n in names]
    return run_evaluators(sae, _Src(x), evs, batch_size=64)


def test_l0_reconstruction_shrinkage_dead_against_numpy():
    torch.manual_seed(1)
    x = torch.randn(200, 6) * 2 + 1
    sae = _sae()
    out = _evaluate(["l0", "reconstruction", "shrinkage", "dead_features"], x, sae)
    with torch.no_grad():
        f = sae.encode(x).numpy()
        xh = sae.decode(sae.encode(x)).numpy()
    xn = x.numpy().astype(np.float64)
    assert out["l0"] == pytest.approx((f > 0).sum(1).mean(), rel=1e-6)
    err = ((xn - xh) ** 2).sum()
    assert out["mse"] == pytest.approx(err / xn.size, rel=1e-6)
    # explained variance against torch.var (population variance summed over dims)
    ev = 1 - err / (torch.var(x.double(), dim=0, unbiased=False).sum().item() * len(x))
    assert out["explained_variance"] == pytest.approx(ev, rel=1e-6)
    assert out["nmse"] == pytest.approx(1 - ev, rel=1e-6)
    assert out["shrinkage"] == pytest.approx((xh * xh).sum() / (xh * xn).sum(), rel=1e-6)
    fired = (f > 0).any(0)
    assert not fired[3]
    assert out["dead_fraction_heldout"] == pytest.approx((~fired).mean())
    dens = out["feature_density"].numpy()
    assert dens.shape == (10,)
    np.testing.assert_allclose(dens[fired], np.log10((f > 0).mean(0)[fired]), rtol=1e-5)
    assert dens[3] == pytest.approx(-7.0)


def test_perfect_reconstruction_has_unit_ev_and_gamma():
    x = torch.randn(50, 4)

    class Identity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            return torch.relu(torch.cat([x, -x], -1))

        def decode(self, f):
            return f[:, :4] - f[:, 4:]

        def forward(self, x):
            f = self.encode(x)
            return self.decode(f), f

        def split_rows(self, rows):
            return rows, rows

    out = _evaluate(["reconstruction", "shrinkage", "l0"], x, Identity())
    assert out["explained_variance"] == pytest.approx(1.0)
    assert out["shrinkage"] == pytest.approx(1.0)
    assert out["l0"] == pytest.approx(4.0)
