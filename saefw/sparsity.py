"""The sparsity coefficient λ and the loss: one owner for both.

Architectures return unweighted terms (:class:`~saefw.arch.base.TrainOutput`); :func:`compose_loss` weighs them,
and :class:`SparsityController` decides λ at every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saefw.arch.base import LossOutput, TrainOutput


def compose_loss(out: TrainOutput, penalty, coefficient: float | Tensor) -> LossOutput:
    """loss = E‖x − x̂‖² + Σ aux + λ·P(sparsity input)."""
    sparsity = torch.as_tensor(penalty(out.sparsity), dtype=out.mse.dtype, device=out.mse.device)
    loss = out.mse + coefficient * sparsity
    for term in out.aux.values():
        loss = loss + term
    terms = {"mse_loss": out.mse.detach(), "sparsity_loss": sparsity.detach(),
             **{k: v.detach() for k, v in out.aux.items()}}
    return LossOutput(loss, out.f, terms)


@dataclass
class SparsityConfig:
    """How λ moves during training (the penalty's ``coefficient`` is where it starts).

    With a target L0 (the top-level ``target_l0``; penalised archs only — top-k archs use it as k), λ adapts
    multiplicatively towards it: log λ ← log λ + rate·clip(log(L0_ema / target), ±1), from the first step
    until the last ``freeze_fraction`` of training, where λ is held at its final value so the SAE converges
    under one fixed objective. ``warmup_fraction`` ramps λ linearly from 0 over the first part of training
    (with or without a target), so early dense latents are not killed before they have learned anything."""

    adapt_rate: float = 0.03
    ema: float = 0.1  # weight of the newest batch's L0 in the running estimate the controller reads
    freeze_fraction: float = 0.2
    warmup_fraction: float = 0.05


class SparsityController(nn.Module):
    """Owns λ_t. Its state (log λ, the L0 estimate) is a pair of buffers, so checkpoints carry it."""

    def __init__(self, cfg: SparsityConfig, initial: float, target_l0: float | None, total_steps: int,
                 active: bool = True):
        super().__init__()
        self.cfg, self.target, self.total_steps, self.active = cfg, target_l0, total_steps, active
        self.register_buffer("log_coefficient", torch.tensor(math.log(initial) if initial > 0 else -math.inf))
        self.register_buffer("l0_ema", torch.tensor(float("nan")))

    @property
    def adapting(self) -> bool:
        return self.active and self.target is not None and math.isfinite(self.log_coefficient.item())

    def coefficient(self, step: int) -> float:
        """λ_t (0 for archs without a penalty)."""
        if not self.active:
            return 0.0
        warm = self.cfg.warmup_fraction * self.total_steps
        ramp = min(1.0, (step + 1) / warm) if warm >= 1 else 1.0
        return math.exp(self.log_coefficient.item()) * ramp

    def frozen(self, step: int) -> bool:
        return step >= (1 - self.cfg.freeze_fraction) * self.total_steps

    @torch.no_grad()
    def update(self, l0: Tensor, step: int) -> None:
        """Feed the batch's L0; move λ towards the target (outside the warmup ramp and the frozen tail)."""
        if not self.adapting:
            return
        l0 = l0.float().clamp_min(1e-3)
        ema = l0 if torch.isnan(self.l0_ema) else torch.lerp(self.l0_ema, l0, self.cfg.ema)
        self.l0_ema.copy_(ema)
        if self.frozen(step) or step < self.cfg.warmup_fraction * self.total_steps:
            return  # no integral wind-up while λ is ramped, nothing after the freeze
        err = torch.log(ema / self.target).clamp(-1.0, 1.0)
        self.log_coefficient.add_(self.cfg.adapt_rate * err)
