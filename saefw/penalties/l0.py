"""L0 penalty for threshold architectures (JumpReLU, Rajamanoharan et al. 2024)."""
from __future__ import annotations

from dataclasses import dataclass, field

from saefw.errors import SaefwError
from saefw.penalties.base import Penalty, PenaltyConfig
from saefw.registry import register


@dataclass
class L0PenaltyConfig(PenaltyConfig):
    # SmolLM2 layer 6: L0 ≈ 80
    coefficient: float = field(default=0.5, metadata={"help": (
        "λ per active latent where training starts, against ‖x − x̂‖² of activations scaled to E‖x‖² ≈ d_in")})


@register("penalty", "l0", L0PenaltyConfig)
class L0Penalty(Penalty):
    """P = E_tokens[‖f‖₀] = E_tokens[Σ_i H(z_i − θ_i)].

    The count itself has zero gradient almost everywhere; the arch supplies ``SparsityInput.l0``, a per-token
    L0 whose backward pass is a straight-through estimate (for JumpReLU: ∂H(z − θ)/∂θ = −(1/ε)K((z − θ)/ε)).
    The L0 is invariant to rescaling f against W_dec, so no unit-norm constraint is needed."""

    def __call__(self, s):
        if s.l0 is None:
            raise SaefwError("penalty=l0 needs an arch with thresholds that supplies a differentiable L0 "
                             "(e.g. arch=jumprelu); for this arch use l1_decoder_norm or tanh")
        return s.l0.mean()
