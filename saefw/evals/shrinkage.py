from __future__ import annotations

from dataclasses import dataclass

from saefw.evals.base import Evaluator
from saefw.registry import register


@dataclass
class ShrinkageConfig:
    pass


@register("evaluator", "shrinkage", ShrinkageConfig)
class ShrinkageEvaluator(Evaluator):
    """Relative reconstruction bias (Gated SAE paper): shrinkage γ = E[x̂·x̂] / E[x̂·x].

    γ is the scale that best maps x̂ onto x (argmin_γ E‖x̂/γ − x‖²); γ < 1 means the SAE shrinks its outputs."""

    def begin(self, sae, source):
        super().begin(sae, source)
        self.hh, self.hx = 0.0, 0.0

    def update(self, x, f, x_hat):
        x_hat = x_hat.double()
        self.hh += (x_hat * x_hat).sum().item()
        self.hx += (x_hat * x.double()).sum().item()

    def compute(self):
        return {"shrinkage": self.hh / self.hx} if self.hx else {}
