from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saefw.evals.base import Evaluator
from saefw.registry import register


@dataclass
class DeadFeaturesConfig:
    density_floor: float = field(default=1e-7, metadata={"help": (
        "a never-firing latent is drawn at this density in the log10 histogram")})
    dense_threshold: float = field(default=0.1, metadata={"help": (
        "a latent firing on more than this fraction of tokens is dense")})


@register("evaluator", "dead_features", DeadFeaturesConfig)
class DeadFeaturesEvaluator(Evaluator):
    """On the held-out tokens: dead_fraction_heldout = #{i : f_i never > 0} / d_sae; dense_fraction =
    #{i : P(f_i > 0) > dense_threshold} / d_sae; feature_density = log10 firing frequency per latent (a
    histogram).

    A few thousand held-out tokens overstate deadness (a rare latent may simply not occur in them), so a training
    run reports ``dead_fraction`` from its training stream instead: the latents that did not fire over the last
    ``train.dead_window_tokens`` training tokens (100k by default)."""

    def begin(self, sae, source):
        super().begin(sae, source)
        self.fires = None
        self.n = 0

    def update(self, x, f, x_hat):
        c = (f > 0).sum(0)
        self.fires = c if self.fires is None else self.fires + c
        self.n += f.shape[0]

    def compute(self):
        if self.fires is None:
            return {}
        freq = self.fires.double().cpu() / self.n
        return {
            "dead_fraction_heldout": (self.fires == 0).double().mean().item(),
            "dense_fraction": (freq > self.cfg.dense_threshold).double().mean().item(),
            "feature_density": torch.log10(freq.clamp_min(self.cfg.density_floor)).float(),
        }
