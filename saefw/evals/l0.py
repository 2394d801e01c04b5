from __future__ import annotations

from dataclasses import dataclass

from saefw.evals.base import Evaluator
from saefw.registry import register


@dataclass
class L0Config:
    pass


@register("evaluator", "l0", L0Config)
class L0Evaluator(Evaluator):
    """l0 = (1/N) Σ_tokens #{i : f_i > 0}: mean number of active latents per held-out token."""

    def begin(self, sae, source):
        super().begin(sae, source)
        self.active, self.tokens = 0.0, 0

    def update(self, x, f, x_hat):
        self.active += (f != 0).sum().item()
        self.tokens += f.shape[0]

    def compute(self):
        return {"l0": self.active / max(self.tokens, 1)}
