"""Steering edits at the SAE's hook point: add decoder directions, or clamp feature activations.

Both return a function x ↦ x' on hook activations [..., d_in] for :meth:`saefw.lm.model.LanguageModel.logits` /
:meth:`~saefw.lm.model.LanguageModel.generate`, which apply it at every non-BOS position.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from saefw.errors import SaefwError

MODES = ("add", "clamp")


def check_features(features: Sequence[int], d_sae: int) -> list[int]:
    out = []
    for i in features:
        if isinstance(i, bool) or not isinstance(i, int):
            raise SaefwError(f"feature={i!r} is not an integer feature index")
        if not 0 <= i < d_sae:
            raise SaefwError(f"feature={i} is out of range: the SAE has {d_sae} features (0-{d_sae - 1})")
        out.append(i)
    if len(set(out)) != len(out):
        raise SaefwError(f"feature={out} lists a feature twice")
    return out


def add_directions(sae, features: Sequence[int], scales: Sequence[float]) -> Callable[[Tensor], Tensor]:
    """x' = x + Σ_j scale_j · d_j, with d_j the unit decoder direction of feature j (so a scale is in the
    units of the activation's norm)."""
    features = check_features(features, sae.d_sae)
    if len(scales) != len(features):
        raise SaefwError(f"scale has {len(scales)} values for {len(features)} features: give one per feature")
    shift = (torch.tensor([float(s) for s in scales])[:, None] * sae.decoder_directions[features].cpu().float()).sum(0)

    def edit(x: Tensor) -> Tensor:
        return x + shift.to(x.device, x.dtype)

    return edit


def clamp_features(sae, features: Sequence[int], values: Sequence[float]) -> Callable[[Tensor], Tensor]:
    """Encode → set f_j := value_j → decode, keeping the SAE's error term:
    x' = decode(f') + (x − decode(f)), so everything the SAE does not reconstruct passes through unchanged and
    x' − x = decode(f') − decode(f) (for the affine decoders of every arch: Σ_j (value_j − f_j) W_dec,j)."""
    features = check_features(features, sae.d_sae)
    if len(values) != len(features):
        raise SaefwError(f"value has {len(values)} entries for {len(features)} features: give one per feature")
    idx = torch.tensor(features)
    target = torch.tensor([float(v) for v in values])
    param = next(sae.parameters())

    def edit(x: Tensor) -> Tensor:
        xs = x.to(param.device, torch.float32)
        f = sae.encode(xs)
        edited = f.clone()
        edited[..., idx.to(f.device)] = target.to(f.device)
        return (xs + (sae.decode(edited) - sae.decode(f))).to(x.device, x.dtype)

    return edit
