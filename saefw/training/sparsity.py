"""The sparsity coefficient λ and the loss: one owner for both.

Architectures return unweighted terms (:class:`~saefw.arch.base.TrainOutput`); :func:`saefw.arch.base.compose_loss` weighs them,
and :class:`SparsityController` decides λ at every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class SparsityConfig:
    """How λ moves during training (the penalty's ``coefficient`` is where it starts).

    ``warmup_fraction``: λ ramps linearly from 0 over the first part of training, so early dense latents are not
    killed before they have learned anything. With a target L0 (the run's ``target_l0``; penalised archs only —
    the top-k archs take it as k), λ then adapts multiplicatively,

        log λ ← log λ + adapt_rate · clip(log(L0_ema / L0*_t), ±1),

    towards a target that itself descends geometrically from the highest L0 seen so far to ``target_l0`` over
    the first ``anneal_fraction`` of training. An untrained SAE is dense and gets sparser by itself as it
    learns, so chasing the final target from the first step would drive λ far too high and collapse L0 (and
    kill latents) before it recovers. Over the last ``freeze_fraction`` λ is held, so the SAE converges under one
    fixed objective."""

    adapt: bool = True  # false: λ = penalty.coefficient throughout (after the warmup ramp), no target
    adapt_rate: float = 0.02
    ema: float = 0.2  # weight of the newest batch's L0 in the running estimate the controller reads
    anneal_fraction: float = 0.5
    freeze_fraction: float = 0.2  # = the learning rate's decay: λ is not chased while the SAE can barely move
    warmup_fraction: float = 0.05


class SparsityController(nn.Module):
    """Owns λ_t. Its state (log λ, the L0 estimate, the L0 where the anneal starts) lives in buffers, so
    checkpoints carry it."""

    def __init__(self, cfg: SparsityConfig, initial: float, target_l0: float | None, total_steps: int,
                 active: bool = True):
        super().__init__()
        self.cfg, self.target, self.total_steps, self.active = cfg, target_l0, total_steps, active
        # log λ only moves by finite steps, so whether it is finite is known from the start (no host sync to ask)
        self._finite = initial > 0
        self.register_buffer("log_coefficient", torch.tensor(math.log(initial) if initial > 0 else -math.inf))
        self.register_buffer("l0_ema", torch.tensor(float("nan")))
        self.register_buffer("l0_start", torch.tensor(float("nan")))

    @property
    def adapting(self) -> bool:
        return self.active and self.target is not None and self._finite

    def _warm_steps(self) -> float:
        return self.cfg.warmup_fraction * self.total_steps

    def _ramp(self, step: int) -> float:
        warm = self._warm_steps()
        return min(1.0, (step + 1) / warm) if warm >= 1 else 1.0

    def coefficient(self, step: int) -> float:
        """λ_t (0 for archs without a penalty)."""
        if not self.active:
            return 0.0
        return math.exp(self.log_coefficient.item()) * self._ramp(step)

    def coefficient_tensor(self, step: int) -> Tensor | float:
        """λ_t as a 0-d tensor on the controller's device (0.0 without a penalty): the training step reads it
        without a host synchronisation."""
        if not self.active:
            return 0.0
        return self.log_coefficient.exp() * self._ramp(step)

    def target_at(self, step: int) -> float:
        """L0*_t: from the highest L0 seen so far down to the target, geometrically."""
        return float(self._target_tensor(step))

    def _target_tensor(self, step: int) -> Tensor:
        anneal = self.cfg.anneal_fraction * self.total_steps
        target = torch.full_like(self.l0_start, float(self.target))
        if step >= anneal:
            return target
        start = self.l0_start
        annealed = self.target * (start / self.target) ** (1 - step / anneal)
        return torch.where(torch.isnan(start) | (start <= self.target), target, annealed)

    def frozen(self, step: int) -> bool:
        return step >= (1 - self.cfg.freeze_fraction) * self.total_steps

    @torch.no_grad()
    def update(self, l0: Tensor, step: int) -> None:
        """Feed the batch's L0; move λ towards L0*_t (except in the frozen tail). The warmup ramp multiplies λ
        and the anneal starts at the L0 seen so far, so the error is ~0 early on and nothing winds up."""
        if not self.adapting:
            return
        # every branch is a torch.where on the device: no host synchronisation in the training step
        l0 = l0.to(self.l0_ema.device, torch.float32).clamp_min(1e-3)
        ema = torch.where(torch.isnan(self.l0_ema), l0, torch.lerp(self.l0_ema, l0, self.cfg.ema))
        self.l0_ema.copy_(ema)
        if step < self.cfg.anneal_fraction * self.total_steps:
            # the densest the SAE has been so far (JumpReLU starts sparse, then densifies); NaN start: take ema
            self.l0_start.copy_(torch.where(ema <= self.l0_start, self.l0_start, ema))
        if self.frozen(step):
            return
        err = torch.log(ema / self._target_tensor(step)).clamp(-1.0, 1.0)
        # too sparse is worse than too dense (latents that stop firing may never come back): back off twice as fast
        rate = torch.where(err < 0, 2.0 * self.cfg.adapt_rate, self.cfg.adapt_rate)
        self.log_coefficient.add_(rate * err)
