"""The synthetic ground-truth source: statistics of the generated data, seeding, the held-out set, bad configs."""
import itertools
import math

import pytest
import torch

from saefw.errors import SaefwError
from saefw.registry import build, discover
from saefw.sources.base import RunSpec
from saefw.sources.synthetic import (
    SyntheticActivationSource,
    SyntheticSourceConfig,
    firing_probabilities,
)


def _source(seed=0, total_tokens=8192, **cfg):
    return SyntheticActivationSource(SyntheticSourceConfig(**cfg), RunSpec(seed=seed, train_tokens=total_tokens))


def test_registered_and_built_from_config():
    discover()
    src = build("source", {"name": "synthetic", "d": 16, "n_features": 40}, spec=RunSpec(seed=0, train_tokens=100))
    assert isinstance(src, SyntheticActivationSource)
    assert src.d_in == 16 and src.lm is None
    assert src.ground_truth.shape == (40, 16)
    assert src.describe()["n_features"] == 40 and "layer" not in src.describe()


def test_directions_unit_norm_and_fixed_by_feature_seed_only():
    a, b = _source(seed=0), _source(seed=7)
    torch.testing.assert_close(a.ground_truth.norm(dim=-1), torch.ones(256))
    assert torch.equal(a.ground_truth, b.ground_truth)  # the run seed never moves the true features
    c = _source(feature_seed=1)
    assert not torch.allclose(a.ground_truth, c.ground_truth)


@pytest.mark.parametrize("zipf, l0", [(0.5, 5.0), (0.0, 3.0), (2.0, 5.0), (1.0, 40.0)])
def test_firing_probabilities_sum_to_target_and_are_zipf(zipf, l0):
    p = firing_probabilities(256, l0, zipf).double()
    assert p.sum().item() == pytest.approx(l0, rel=1e-5)
    assert (p <= 1).all() and (p > 0).all()
    assert (p[:-1] >= p[1:]).all()
    free = p < 1  # unsaturated features keep the Zipf ratio p_i / p_j = ((j+1)/(i+1))^α
    i = torch.nonzero(free).squeeze(1)
    ratio = p[i[0]] / p[i[-1]]
    assert ratio.item() == pytest.approx(((i[-1] + 1) / (i[0] + 1)).item() ** zipf, rel=1e-4)


def test_firing_probabilities_saturate_at_one():
    p = firing_probabilities(10, 9.5, 1.0)  # steep Zipf with a large L0: the head must clip at 1
    assert p.max().item() == 1.0 and p.sum().item() == pytest.approx(9.5, rel=1e-5)


_ON = 1e-3  # a code counts as active above this (magnitudes are |N(1, 0.2)|, float32 error ~1e-6)


def _empirical_l0(src, n=20000, seed=3):
    """Mean active features per token, and the codes a [n, n_features]: x = a·D cannot be inverted when
    n_features > d, so these tests use n_features ≤ d, where D has full row rank and a = x·D⁺ exactly."""
    x = src.sample(n, torch.Generator().manual_seed(seed))
    codes = torch.linalg.lstsq(src.ground_truth.T.double(), x.T.double()).solution.T
    return (codes.abs() > _ON).sum(1).double().mean().item(), codes


@pytest.mark.parametrize("correlation", [0.0, 0.6])
def test_empirical_l0_and_magnitudes_match_config(correlation):
    src = _source(d=64, n_features=48, target_l0=5.0, correlation=correlation, correlation_groups=4)
    l0, codes = _empirical_l0(src)
    # standard error of the mean L0 over 20000 tokens: 0.015 independent, 0.031 correlated → ~5 s.e. tolerances
    assert l0 == pytest.approx(5.0, abs=0.15 if correlation else 0.08)
    active = codes[codes.abs() > _ON]
    assert (active > 0).all()  # non-negative combinations
    assert active.mean().item() == pytest.approx(1.0, abs=0.02)
    assert active.std().item() == pytest.approx(0.2, abs=0.02)
    freq = (codes.abs() > _ON).double().mean(0)
    torch.testing.assert_close(freq, src.probs.double(), atol=0.015, rtol=0.0)


def test_correlation_makes_group_members_co_fire():
    src = _source(d=32, n_features=32, target_l0=4.0, zipf_exponent=0.0, correlation=0.8, correlation_groups=2)
    _, codes = _empirical_l0(src, n=20000)
    on = (codes.abs() > _ON).double()
    c = torch.corrcoef(on.T)
    same = src.groups[:, None] == src.groups[None, :]
    off_diag = ~torch.eye(32, dtype=torch.bool)
    assert c[same & off_diag].mean() > 0.2
    assert c[~same].mean().abs() < 0.02
    ind = _source(d=32, n_features=32, target_l0=4.0, zipf_exponent=0.0)
    _, codes0 = _empirical_l0(ind, n=20000)
    c0 = torch.corrcoef((codes0.abs() > _ON).double().T)
    assert c0[off_diag].abs().mean() < 0.02


def test_noise_adds_isotropic_gaussian():
    clean = _source(d=16, n_features=32).sample(4000, torch.Generator().manual_seed(0))
    noisy = _source(d=16, n_features=32, noise_std=0.1).sample(4000, torch.Generator().manual_seed(0))
    # same draws for the codes, then noise: the difference is the noise alone
    assert (noisy - clean).std().item() == pytest.approx(0.1, rel=0.05)


def test_train_stream_seeded_by_run_seed_and_budgeted():
    a = list(_source(seed=0, total_tokens=1000).train_batches(256))
    assert [len(b) for b in a] == [256] * 3  # exactly train_tokens // batch_size batches
    a2 = list(_source(seed=0, total_tokens=1000).train_batches(256))
    b = list(_source(seed=1, total_tokens=1000).train_batches(256))
    assert all(torch.equal(u, v) for u, v in zip(a, a2))
    assert not torch.allclose(a[0], b[0])
    assert a[0].shape == (256, 64) and a[0].dtype == torch.float32


def test_eval_set_fixed_across_calls_seeds_and_batch_sizes_and_unlike_train():
    src = _source(seed=0, eval_tokens=1000)
    first = torch.cat(list(src.eval_batches(300)))
    assert first.shape == (1000, 64)
    assert torch.equal(first, torch.cat(list(src.eval_batches(128))))
    assert torch.equal(first, torch.cat(list(_source(seed=5, eval_tokens=1000).eval_batches(1000))))
    train = next(src.train_batches(1000))
    assert not torch.allclose(first, train)


def test_stream_serves_exactly_the_budget():
    src = _source(total_tokens=262144)
    assert sum(len(b) for b in src.train_batches(4096)) == 262144


@pytest.mark.parametrize("key, value", [
    ("d", 0), ("n_features", 0), ("target_l0", 0.0), ("target_l0", 300.0), ("zipf_exponent", -1.0),
    ("magnitude_mean", 0.0), ("magnitude_std", -0.1), ("noise_std", -1.0), ("correlation", 1.0),
    ("correlation", -0.1), ("correlation_groups", 0), ("eval_tokens", 0), ("zipf_exponent", math.nan),
])
def test_bad_config_values_raise_saefw_error(key, value):
    with pytest.raises(SaefwError, match=f"source.{key}="):
        _source(**{key: value})


def test_islice_of_stream_is_cheap():
    # Lightning pulls batches lazily: the generator must not pre-generate the whole budget
    src = _source(total_tokens=10**12)
    assert len(list(itertools.islice(src.train_batches(64), 3))) == 3
