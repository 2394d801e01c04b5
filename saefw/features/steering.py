"""Steering edits at the SAE's hook point: add decoder directions, or clamp feature activations.

Both return a function x ↦ x' on hook activations [..., d_out] of the site the SAE writes, for
:meth:`saefw.lm.model.LanguageModel.logits` / :meth:`~saefw.lm.model.LanguageModel.generate`, which apply it at
every non-BOS position. For a plain SAE that is the site it reads; a transcoder's decoder rows live in its output
site (mlp_out), so that is where it steers, and its clamp reads the latents from its input site (mlp_in) in the
same forward (:func:`reading_input`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

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


def clamp_features(sae, features: Sequence[int], values: Sequence[float]) -> Callable[..., Tensor]:
    """Encode → set f_j := value_j → decode, keeping the SAE's error term:
    x' = decode(f') + (x − decode(f)), so everything the SAE does not reconstruct passes through unchanged and
    x' − x = decode(f') − decode(f) (for the affine decoders of every arch: Σ_j (value_j − f_j) W_dec,j).

    The edit is ``edit(y, x_in=None)``: ``y`` the written site's activation, ``x_in`` the read site's at the same
    positions (a transcoder: f = encode(x_in), y' = y + decode(f', x_in) − decode(f, x_in), the skip path
    cancelling); without ``x_in`` the SAE reads ``y`` itself."""
    features = check_features(features, sae.d_sae)
    if len(values) != len(features):
        raise SaefwError(f"value has {len(values)} entries for {len(features)} features: give one per feature")
    idx = torch.tensor(features)
    target = torch.tensor([float(v) for v in values])
    param = next(sae.parameters())

    def edit(x: Tensor, x_in: Tensor | None = None) -> Tensor:
        xs = x.to(param.device, torch.float32)
        extra = () if x_in is None else (x_in.to(param.device, torch.float32),)  # a transcoder's decode takes x_in
        f = sae.encode(extra[0] if extra else xs)
        edited = f.clone()
        edited[..., idx.to(f.device)] = target.to(f.device)
        return (xs + (sae.decode(edited, *extra) - sae.decode(f, *extra))).to(x.device, x.dtype)

    return edit


@contextmanager
def reading_input(lm, point: tuple[int, str], edit: Callable[[Tensor, Tensor], Tensor]
                  ) -> Iterator[Callable[[Tensor], Tensor]]:
    """Inside, ``replace`` (yielded) is ``y ↦ edit(y, x_in)`` for ``lm``'s :meth:`generate`/:meth:`logits` at its
    own hook point, with ``x_in`` the activation at ``point`` (upstream of it: a transcoder's input site) that the
    same forward captured, cut to ``y``'s positions (both end at the same position: the edit sees the last
    ``y.shape[1]`` of them, BOS left out as ``generate`` leaves it out)."""
    seen: dict[str, Tensor] = {}

    def grab(x: Tensor) -> None:
        seen["x"] = x.detach()

    def replace(y: Tensor) -> Tensor:
        if "x" not in seen:
            raise SaefwError(f"the hook at {point} did not run before the edited one: it must be upstream of it")
        x = seen["x"]
        return edit(y, x[:, x.shape[1] - y.shape[1]:])

    with lm.hooked(grab, *point):
        yield replace
