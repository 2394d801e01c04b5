"""Synthetic activations built from known feature directions, so an SAE's recovery of them can be scored."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from saefw.errors import SaefwError
from saefw.registry import register
from saefw.sources.base import ActivationSource, RunSpec

# Stream tags mixed into the seeds: the train stream (run seed), the held-out set and the feature geometry
# (feature_seed) draw from unrelated generators even when the two seeds happen to be equal.
_TRAIN, _EVAL, _FEATURES = 0, 1, 2


@dataclass
class SyntheticSourceConfig:
    d: int = field(default=64, metadata={"help": "activation dimension d_in"})
    n_features: int = field(default=256, metadata={"help": "true features (n_features > d: features in superposition)"})
    target_l0: float = field(default=5.0, metadata={"help": "expected number of active true features per token"})
    zipf_exponent: float = field(default=0.5, metadata={"help": (
        "p_i ∝ (i+1)^-zipf_exponent; 0: every feature equally frequent")})
    magnitude_mean: float = field(default=1.0, metadata={"help": (
        "magnitudes a_i = |N(magnitude_mean, magnitude_std)|")})
    magnitude_std: float = field(default=0.2, metadata={"help": "the spread of the magnitudes (see magnitude_mean)"})
    noise_std: float = field(default=0.0, metadata={"help": "isotropic Gaussian noise added to every coordinate"})
    correlation: float = field(default=0.0, metadata={"help": (
        "in [0, 1): copula correlation between features of one group; 0: independent")})
    correlation_groups: int = field(default=16, metadata={"help": (
        "features are split at random into this many correlated groups")})
    eval_tokens: int = field(default=16384, metadata={"help": (
        "held-out tokens (a fixed set, identical across runs and seeds)")})
    feature_seed: int = field(default=0, metadata={"help": (
        "fixes the directions, groups and held-out set; the run seed only drives training data")})


def _seed(*parts: int) -> int:
    """A 63-bit torch seed derived from ``parts`` (SeedSequence hashing: nearby inputs give unrelated seeds)."""
    hi, lo = np.random.SeedSequence([p & 0xFFFFFFFF for p in parts] + [len(parts)]).generate_state(2)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def firing_probabilities(n_features: int, target_l0: float, zipf_exponent: float) -> Tensor:
    """p_i = min(1, s·(i+1)^−α) with s chosen so that Σ_i p_i = target_l0 exactly.

    Clipping at 1 removes mass, so s is found by water-filling: the features that saturate are fixed at 1 and
    the remaining budget is spread over the rest in proportion to their Zipf weights."""
    w = torch.arange(1, n_features + 1, dtype=torch.float64).pow(-zipf_exponent)
    p = torch.zeros(n_features, dtype=torch.float64)
    saturated = torch.zeros(n_features, dtype=torch.bool)
    for _ in range(n_features):  # each pass saturates ≥ 1 more feature or terminates
        free = ~saturated
        budget = target_l0 - saturated.sum().item()
        p = torch.where(saturated, 1.0, w * budget / w[free].sum())
        newly = free & (p > 1.0)
        if not newly.any():
            break
        saturated |= newly
    return p.clamp(max=1.0).float()


@register("source", "synthetic", SyntheticSourceConfig)
class SyntheticActivationSource(ActivationSource):
    """x = Σ_i a_i·c_i·d_i + ε, a toy model of superposition with known ground truth.

    * d_i ∈ R^d: ``n_features`` random unit vectors, d_i = g_i/‖g_i‖ with g_i ~ N(0, I) (fixed by feature_seed).
    * c_i ∈ {0, 1}: feature i fires with probability p_i ∝ (i+1)^−α (Zipf-like), scaled so E[Σ_i c_i] =
      target_l0 (see :func:`firing_probabilities`).
    * Correlation (Gaussian copula with one latent factor per group): c_i = 1[z_i < Φ⁻¹(p_i)] where
      z_i = √ρ·u_g(i) + √(1−ρ)·e_i, u, e ~ N(0, 1). Each z_i is N(0, 1), so P(c_i = 1) = p_i for every ρ; two
      features of the same group have latent correlation ρ, features of different groups are independent.
    * a_i = |m_i|, m_i ~ N(magnitude_mean, magnitude_std²) (folded normal: non-negative, ≈ N for mean ≫ std).
    * ε ~ N(0, noise_std²·I).

    ``ground_truth`` holds the directions [n_features, d]. It has no model, layer or site."""

    def __init__(self, cfg: SyntheticSourceConfig, spec: RunSpec):
        super().__init__(cfg, spec)
        _validate(cfg)
        self.d_in = cfg.d
        g = torch.Generator().manual_seed(_seed(_FEATURES, cfg.feature_seed))
        dirs = torch.randn(cfg.n_features, cfg.d, generator=g)
        self.ground_truth = dirs / dirs.norm(dim=-1, keepdim=True)
        self.groups = torch.randint(cfg.correlation_groups, (cfg.n_features,), generator=g)
        self.probs = firing_probabilities(cfg.n_features, cfg.target_l0, cfg.zipf_exponent)
        self._thresholds = torch.special.ndtri(self.probs.double()).float()  # Φ⁻¹(p_i); ±inf at p ∈ {0, 1}
        self._eval: Tensor | None = None

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` tokens [n, d] drawn with ``generator``."""
        cfg = self.cfg
        if cfg.correlation > 0:
            u = torch.randn(n, cfg.correlation_groups, generator=generator)
            z = torch.randn(n, cfg.n_features, generator=generator).mul_(math.sqrt(1 - cfg.correlation))
            z.add_(u[:, self.groups], alpha=math.sqrt(cfg.correlation))
            fire = z < self._thresholds
        else:
            fire = torch.rand(n, cfg.n_features, generator=generator) < self.probs
        # magnitudes only for the ~target_l0 firing entries per token: the dense draw would dominate the cost
        idx = fire.view(-1).nonzero().squeeze(1)
        mags = torch.randn(len(idx), generator=generator).mul_(cfg.magnitude_std).add_(cfg.magnitude_mean).abs_()
        acts = torch.zeros(n * cfg.n_features)
        acts[idx] = mags
        x = acts.view(n, cfg.n_features) @ self.ground_truth
        if cfg.noise_std > 0:
            x.add_(torch.randn(n, cfg.d, generator=generator), alpha=cfg.noise_std)
        return x

    def train_batches(self, batch_size: int) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(_seed(_TRAIN, self.spec.seed))
        for _ in range(self.spec.train_tokens // batch_size):
            yield self.sample(batch_size, g)

    def eval_batches(self, batch_size: int) -> Iterator[Tensor]:
        if self._eval is None:
            g = torch.Generator().manual_seed(_seed(_EVAL, self.cfg.feature_seed))
            self._eval = self.sample(self.cfg.eval_tokens, g)
        yield from self._eval.split(batch_size)

    def describe(self) -> dict:
        c = self.cfg
        return {"d": c.d, "n_features": c.n_features, "target_l0": c.target_l0,
                "zipf_exponent": c.zipf_exponent, "magnitude_mean": c.magnitude_mean,
                "magnitude_std": c.magnitude_std, "noise_std": c.noise_std, "correlation": c.correlation,
                "correlation_groups": c.correlation_groups, "feature_seed": c.feature_seed}


def _validate(cfg: SyntheticSourceConfig) -> None:
    def bad(key, value, valid):
        raise SaefwError(f"source.{key}={value!r} is invalid; valid: {valid}")

    if cfg.d < 1:
        bad("d", cfg.d, "an integer ≥ 1")
    if cfg.n_features < 1:
        bad("n_features", cfg.n_features, "an integer ≥ 1")
    if not 0 < cfg.target_l0 <= cfg.n_features:
        bad("target_l0", cfg.target_l0, f"0 < target_l0 ≤ n_features ({cfg.n_features})")
    if not math.isfinite(cfg.zipf_exponent) or cfg.zipf_exponent < 0:
        bad("zipf_exponent", cfg.zipf_exponent, "a finite number ≥ 0")
    if not math.isfinite(cfg.magnitude_mean) or cfg.magnitude_mean <= 0:
        bad("magnitude_mean", cfg.magnitude_mean, "a finite number > 0")
    if not math.isfinite(cfg.magnitude_std) or cfg.magnitude_std < 0:
        bad("magnitude_std", cfg.magnitude_std, "a finite number ≥ 0")
    if not math.isfinite(cfg.noise_std) or cfg.noise_std < 0:
        bad("noise_std", cfg.noise_std, "a finite number ≥ 0")
    if not 0 <= cfg.correlation < 1:
        bad("correlation", cfg.correlation, "0 ≤ correlation < 1 (0 = independent features)")
    if cfg.correlation_groups < 1:
        bad("correlation_groups", cfg.correlation_groups, "an integer ≥ 1")
    if cfg.eval_tokens < 1:
        bad("eval_tokens", cfg.eval_tokens, "an integer ≥ 1")
