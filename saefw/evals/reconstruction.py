from __future__ import annotations

from dataclasses import dataclass


from saefw.evals.base import Evaluator
from saefw.registry import register


@dataclass
class ReconstructionConfig:
    pass


@register("evaluator", "reconstruction", ReconstructionConfig)
class ReconstructionEvaluator(Evaluator):
    """mse = Σ‖x − x̂‖² / (N·d);  explained_variance = 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²;  nmse = 1 − EV.

    Sums are accumulated in float64 with a streaming mean (Σx, Σ‖x‖²) so the held-out split never has to fit
    in memory: Σ‖x − x̄‖² = Σ‖x‖² − N‖x̄‖²."""

    def begin(self, sae, source):
        super().begin(sae, source)
        self.sq_err = 0.0
        self.sum_x = None
        self.sum_sq = 0.0
        self.n = 0

    def update(self, x, f, x_hat):
        x64 = x.double()
        self.sq_err += (x64 - x_hat.double()).pow(2).sum().item()
        s = x64.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq += x64.pow(2).sum().item()
        self.n += x.shape[0]

    def compute(self):
        if self.n == 0:
            return {}
        mean = self.sum_x / self.n
        total_var = self.sum_sq - self.n * mean.pow(2).sum().item()
        ev = 1.0 - self.sq_err / total_var
        return {"mse": self.sq_err / (self.n * mean.numel()), "explained_variance": ev, "nmse": 1.0 - ev}
