"""Tanh penalty (Anthropic, "Circuits Updates", Feb 2025 / Jermyn et al.): a saturating, L0-like surrogate."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saefw.penalties.base import Penalty, PenaltyConfig
from saefw.registry import register


@dataclass
class TanhPenaltyConfig(PenaltyConfig):
    # larger c → closer to L0 (every firing costs ≈ 1); smaller c → closer to L1 (c·Σ f_i‖W_dec,i‖)
    sharpness: float = field(default=1.0, metadata={"help": (
        "c in tanh(c·f_i‖W_dec,i‖): 1/c is the decoder-norm-weighted activation at which a latent's cost is "
        "~76% saturated")})


@register("penalty", "tanh", TanhPenaltyConfig)
class TanhPenalty(Penalty):
    """P = E_tokens[Σ_i tanh(c · f_i ‖W_dec,i‖)],  c = ``sharpness``.

    Like L1 for small activations (tanh(u) ≈ u) but bounded by 1 per latent, so large, clearly-on latents are
    not shrunk. Weighted by decoder norms, so (as l1_decoder_norm) it cannot be gamed by rescaling f against
    W_dec and needs no unit-norm constraint."""

    def __call__(self, s):
        return torch.tanh(self.cfg.sharpness * s.acts * s.norms()).sum(-1).mean()
