"""The sparsity-penalty interface: a callable from ``SparsityInput`` to a scalar (mean over tokens)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from saefw.arch.base import SparsityInput


@dataclass
class PenaltyConfig:
    """``coefficient`` is λ where training starts; the :class:`~saefw.training.sparsity.SparsityController` owns it from
    there (warmup, adaptation towards the run's ``target_l0``, freeze)."""

    coefficient: float = field(default=5.0, metadata={"help": (
        "λ where training starts (then adapted towards target_l0 unless sparsity.adapt=false)")})


class Penalty:
    """Base class: ``__call__(SparsityInput) -> Tensor`` scalar."""

    plugin_name = "?"
    requires_unit_norm_decoder = False  # true when the penalty ignores decoder norms and could be gamed

    def __init__(self, cfg: PenaltyConfig):
        self.cfg = cfg

    def __call__(self, s: SparsityInput) -> Tensor:
        raise NotImplementedError
