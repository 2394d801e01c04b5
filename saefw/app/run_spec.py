"""What a run asks of every activation source (kept below the stages, so the store's command can build a source
without importing the plugin layer above it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunSpec:
    """What the run asks of every source: its seed and how many training tokens it will consume (the run plan
    owns the budget; see :class:`saefw.training.plan.RunPlan`)."""

    seed: int
    train_tokens: int
