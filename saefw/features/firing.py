"""Firing statistics per feature, and the dead / dense lists."""
from __future__ import annotations

import torch
from torch import Tensor


def feature_statistics(fired: Tensor, act_sum: Tensor, max_act: Tensor, n_tokens: int) -> dict[str, Tensor]:
    """density_i = #{tokens with f_i > 0} / n_tokens;  mean_act_i = Σ f_i / n_tokens (over every scanned token);
    mean_act_firing_i = Σ f_i / #{f_i > 0} (over the tokens where it fires; 0 for a dead feature)."""
    n = max(n_tokens, 1)
    return {"fired": fired.long(), "density": fired.double().div(n).float(),
            "mean_act": act_sum.div(n).float(),
            "mean_act_firing": torch.where(fired > 0, act_sum / fired.clamp_min(1), 0.0).float(),
            "max_act": max_act.float()}


def dead_and_dense(fired: Tensor, n_tokens: int, dense_threshold: float) -> tuple[list[int], list[int]]:
    """Dead: features that never fired in the scan. Dense: features firing on more than ``dense_threshold``
    (a fraction) of the scanned tokens."""
    density = fired.double() / max(n_tokens, 1)
    dead = (fired == 0).nonzero().flatten().tolist()
    dense = (density > dense_threshold).nonzero().flatten().tolist()
    return dead, dense
