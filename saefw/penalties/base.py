"""The sparsity-penalty interface: a callable from ``SparsityInput`` to a scalar (mean over tokens)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saefw.arch.base import SparsityInput


@dataclass
class PenaltyConfig:
    """Shared options. ``coefficient`` is λ; it ramps linearly from 0 over ``warmup_steps``.
    With ``target_l0`` set, λ is adapted multiplicatively each step towards that training L0."""

    coefficient: float = 5.0
    warmup_steps: int = 0
    target_l0: float | None = None
    target_l0_rate: float = 0.01  # per step: λ ← λ·exp(rate·sign(L0 − target))


class Penalty:
    """Base class: ``__call__(SparsityInput) -> Tensor`` scalar."""

    plugin_name = "?"
    requires_unit_norm_decoder = False  # true when the penalty ignores decoder norms and could be gamed

    def __init__(self, cfg: PenaltyConfig):
        self.cfg = cfg

    def __call__(self, s: SparsityInput) -> Tensor:
        raise NotImplementedError
