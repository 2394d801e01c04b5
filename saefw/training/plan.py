"""The run's token budget, decided once and handed to the data stream and to the trainer."""
from __future__ import annotations

from dataclasses import dataclass

from saefw.errors import SaefwError


@dataclass(frozen=True)
class RunPlan:
    """steps = ``total_tokens`` // ``batch_size`` (or ``trainer.max_steps`` when set); tokens = steps·batch_size.

    The source serves exactly ``tokens`` training tokens and the Trainer stops after ``steps`` steps, so the two
    can never disagree."""

    batch_size: int
    steps: int

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size

    @classmethod
    def from_config(cls, cfg) -> "RunPlan":
        batch = cfg.train.batch_size
        if batch < 1:
            raise SaefwError(f"train.batch_size={batch} is invalid; it must be ≥ 1")
        max_steps = cfg.trainer.get("max_steps", -1)
        if max_steps is not None and max_steps >= 0:
            steps = int(max_steps)
        else:
            if cfg.total_tokens < batch:
                raise SaefwError(f"total_tokens={cfg.total_tokens} is smaller than one batch "
                                 f"(train.batch_size={batch}); raise total_tokens or lower the batch size")
            steps = cfg.total_tokens // batch
        if steps < 1:
            raise SaefwError(f"trainer.max_steps={max_steps} leaves nothing to train; it must be ≥ 1")
        return cls(batch_size=batch, steps=steps)
