from __future__ import annotations

from dataclasses import dataclass, field

from saefw.penalties.base import Penalty, PenaltyConfig
from saefw.registry import register


@dataclass
class L1PenaltyConfig(PenaltyConfig):
    # tuned on SmolLM2 layer 6 with 300k tokens: λ = 5 left L0 ≈ 200, λ = 10 gives L0 ≈ 55 at EV ≈ 0.70
    coefficient: float = field(default=10.0, metadata={"help": (
        "λ where training starts (then adapted towards target_l0 unless sparsity.adapt=false)")})


@register("penalty", "l1", L1PenaltyConfig)
class L1Penalty(Penalty):
    """P = E_tokens[Σ_i f_i]. Ignores decoder norms, so the decoder is held at unit norm."""

    requires_unit_norm_decoder = True

    def __call__(self, s):
        return s.acts.sum(-1).mean()


@register("penalty", "l1_decoder_norm", L1PenaltyConfig)
class L1DecoderNormPenalty(Penalty):
    """P = E_tokens[Σ_i f_i‖W_dec,i‖] (Anthropic, April 2024): invariant to rescaling f_i against W_dec,i."""

    def __call__(self, s):
        # summed over tokens first: one pass over [B, d_sae] forward and none backward (= (f·‖W_dec‖).sum(-1).mean())
        acts = s.acts.reshape(-1, s.acts.shape[-1])
        return acts.sum(0) @ s.norms().to(acts.dtype) / acts.shape[0]
