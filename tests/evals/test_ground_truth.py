"""The ground-truth evaluator (mmcs, frac_recovered) against hand-built decoders and a numpy computation."""
import numpy as np
import pytest
import torch

from saefw.errors import SaefwError
from saefw.evals.base import run_evaluators, usable
from saefw.registry import build, discover
from saefw.sources.base import RunSpec


class _Src:
    lm = None

    def __init__(self, truth, x=None):
        self.ground_truth = truth
        self.x = x if x is not None else torch.randn(50, truth.shape[1])

    def eval_batches(self, batch_size):
        yield from self.x.split(batch_size)


def _unit(t):
    return t / t.norm(dim=-1, keepdim=True)


def _sae_with_decoder(W_dec):
    discover()
    sae = build("arch", {"name": "l1"}, d_in=W_dec.shape[1], d_sae=W_dec.shape[0])
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
    return sae


def _evaluate(truth, W_dec, **cfg):
    discover()
    ev = build("evaluator", cfg, name="ground_truth")
    return run_evaluators(_sae_with_decoder(W_dec), _Src(truth), [ev], batch_size=16)


def _numpy_reference(truth, W_dec, threshold):
    t = truth.numpy().astype(np.float64)
    w = W_dec.numpy().astype(np.float64)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    best = np.array([max(float(ti @ wj) for wj in w) for ti in t])
    return best.mean(), (best >= threshold).mean()


def _rotate(v, u, angle):
    """v rotated by ``angle`` towards u (u ⟂ v, both unit): cos(v, result) = cos(angle) exactly."""
    return np.cos(angle) * v + np.sin(angle) * u


def _truth(n=8, d=16, seed=0):
    return _unit(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def test_exact_decoder_scores_one():
    t = _truth()
    out = _evaluate(t, t * 3.0)  # decoder norms do not matter: cosines
    assert out["mmcs"] == pytest.approx(1.0, abs=1e-6)
    assert out["frac_recovered"] == 1.0


def test_rotated_copies_with_known_cosines():
    d = 16
    # orthonormal truth so that rotating towards an extra orthogonal axis gives an exactly known cosine
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    truth, spare = q[:, :6].T, q[:, 6:].T
    angles = np.deg2rad([5.0, 10.0, 20.0, 30.0, 45.0, 60.0])
    rotated = torch.stack([_rotate(truth[i], spare[i], a) for i, a in enumerate(angles)]).float()
    # an uninformative extra row orthogonal to every true feature must not change the maxima
    dec = torch.cat([rotated, spare[-1:].float()])
    out = _evaluate(truth.float(), dec, threshold=0.9)
    cos = np.cos(angles)
    assert out["mmcs"] == pytest.approx(cos.mean(), abs=1e-5)
    assert out["frac_recovered"] == pytest.approx((cos >= 0.9).mean())  # 5°, 10°, 20° ≥ 0.9; 30° (0.866) not
    assert out["frac_recovered"] == pytest.approx(0.5)
    out = _evaluate(truth.float(), dec, threshold=0.8)
    assert out["frac_recovered"] == pytest.approx(4 / 6)


def test_true_features_plus_rotated_copies_take_the_best_match():
    t = _truth(n=6)
    noisy = _unit(t + 0.3 * torch.randn(6, 16, generator=torch.Generator().manual_seed(2)))
    out = _evaluate(t, torch.cat([noisy, t]))
    assert out["mmcs"] == pytest.approx(1.0, abs=1e-6)


def test_permuted_and_sign_flipped_decoder():
    t = _truth(n=10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    dec = t[perm].clone()
    flipped = perm[:4]  # rows holding true features perm[0..3] point the wrong way
    dec[:4] *= -1
    out = _evaluate(t, dec)
    mmcs, frac = _numpy_reference(t, dec, 0.9)
    assert out["mmcs"] == pytest.approx(mmcs, abs=1e-6)
    assert out["frac_recovered"] == pytest.approx(frac)
    assert out["frac_recovered"] == pytest.approx(0.6)  # a negated direction is not a recovered feature
    best = (t @ _unit(dec).T).max(1).values
    assert (best[flipped] < 0.99).all() and (best[perm[4:]] > 1 - 1e-6).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_overcomplete_decoder_matches_numpy(seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(30, 12, generator=g) * 2.0  # not unit: the evaluator normalises the truth too
    dec = torch.randn(50, 12, generator=g)
    out = _evaluate(t, dec, threshold=0.5)
    mmcs, frac = _numpy_reference(t, dec, 0.5)
    assert out["mmcs"] == pytest.approx(mmcs, abs=1e-6)
    assert out["frac_recovered"] == pytest.approx(frac)


def test_skipped_without_ground_truth_and_usable_with_synthetic_source():
    discover()
    ev = build("evaluator", {}, name="ground_truth")
    assert ev.requires == ("ground_truth",)

    class NoTruth:
        ground_truth = None

    assert not usable(ev, NoTruth())
    src = build("source", {"name": "synthetic", "d": 8, "n_features": 12, "eval_tokens": 64},
                spec=RunSpec(seed=0, train_tokens=100))
    assert usable(ev, src)
    out = run_evaluators(_sae_with_decoder(src.ground_truth.flip(0)), src, [ev])
    assert out["mmcs"] == pytest.approx(1.0, abs=1e-6) and out["frac_recovered"] == 1.0


def test_input_scale_does_not_change_directions():
    t = _truth()
    sae = _sae_with_decoder(t)
    sae.input_scale.fill_(7.5)
    ev = build("evaluator", {}, name="ground_truth")
    out = run_evaluators(sae, _Src(t), [ev])
    assert out["mmcs"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bad", [1.5, -2.0])
def test_bad_threshold(bad):
    discover()
    with pytest.raises(SaefwError, match="threshold"):
        build("evaluator", {"threshold": bad}, name="ground_truth")
