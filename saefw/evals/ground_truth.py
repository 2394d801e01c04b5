from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saefw.errors import SaefwError
from saefw.evals.base import Evaluator
from saefw.registry import register


@dataclass
class GroundTruthConfig:
    threshold: float = field(default=0.9, metadata={"help": (
        "a true feature counts as recovered when some decoder row has cosine ≥ this")})


@register("evaluator", "ground_truth", GroundTruthConfig)
class GroundTruthEvaluator(Evaluator):
    """Recovery of known feature directions (sources with ``ground_truth``, e.g. ``source=synthetic``).

    With true unit directions t_i [n, d_in] and unit decoder rows w_j [d_sae, d_in]:
    m_i = max_j cos(t_i, w_j);  mmcs = (1/n) Σ_i m_i;  frac_recovered = #{i : m_i ≥ threshold} / n.

    The cosine is signed: a decoder row pointing opposite to a feature (which a non-negative latent cannot use
    to represent it) does not count. Depends only on the weights, so nothing is accumulated per batch."""

    requires = ("ground_truth",)

    def __init__(self, cfg: GroundTruthConfig):
        if not -1.0 <= cfg.threshold <= 1.0:
            raise SaefwError(f"evaluators.ground_truth.threshold={cfg.threshold!r} is invalid; valid: a cosine "
                             f"in [-1, 1]")
        super().__init__(cfg)

    def compute(self):
        dec = self.sae.decoder_directions.float()
        truth = self.source.ground_truth.to(dec.device, torch.float32)
        truth = truth / truth.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        best = (truth @ dec.T).max(dim=1).values
        return {"mmcs": best.mean().item(),
                "frac_recovered": (best >= self.cfg.threshold).double().mean().item()}
