"""No penalty: for architectures whose sparsity is structural (topk, batchtopk)."""
from __future__ import annotations

from dataclasses import dataclass

from saefw.penalties.base import Penalty
from saefw.registry import register


@dataclass
class NonePenaltyConfig:
    """Empty on purpose: there is no coefficient, warmup or target_l0 to set (SAEModule treats λ as 0)."""


@register("penalty", "none", NonePenaltyConfig)
class NonePenalty(Penalty):
    """P = 0 (a scalar on the decoder's device and dtype, so ``loss + λ·P`` works anywhere)."""

    def __call__(self, s):
        return s.W_dec.new_zeros(())  # W_dec: acts may be SparseLatents (top-k archs)
