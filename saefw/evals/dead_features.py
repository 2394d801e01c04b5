from __future__ import annotations

from dataclasses import dataclass

import torch

from saefw.evals.base import Evaluator
from saefw.registry import register


@dataclass
class DeadFeaturesConfig:
    density_floor: float = 1e-7  # log10 of a never-firing latent is drawn at this density


@register("evaluator", "dead_features", DeadFeaturesConfig)
class DeadFeaturesEvaluator(Evaluator):
    """dead_fraction = #{i : f_i never > 0 on the held-out tokens} / d_sae;
    feature_density = log10(firing frequency) per latent (a histogram).

    The training module also logs ``train/dead_fraction`` over a sliding window of training tokens
    (``train.dead_window_tokens``)."""

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
            "dead_fraction": (self.fires == 0).double().mean().item(),
            "dense_fraction": (freq > 0.1).double().mean().item(),
            "feature_density": torch.log10(freq.clamp_min(self.cfg.density_floor)).float(),
        }
