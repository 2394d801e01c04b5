"""Relations by weights: cosine similarity between the decoder directions of two SAEs.

For SAEs at two hook points of one model that share the residual basis (d_in equal), feature i of the first
and feature j of the second write along similar directions when cos(d_i, d_j) = d_i·d_j / (‖d_i‖‖d_j‖) is
near 1. Each feature's best matches in the other SAE are the ``k`` largest cosines of its row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saefw.errors import SaefwError


@dataclass
class CosineMatches:
    """Per feature of the first SAE [d_sae_a, k]: ``values`` the k largest cosines with the second SAE's
    decoder directions (descending) and ``indices`` the matching features of the second SAE."""

    values: Tensor
    indices: Tensor


def _unit(w: Tensor) -> Tensor:
    w = w.detach().float()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """cos[i, j] = a_i·b_j / (‖a_i‖‖b_j‖) for directions ``a`` [n, d] and ``b`` [m, d]."""
    if a.shape[-1] != b.shape[-1]:
        raise SaefwError(f"decoder directions of different widths ({a.shape[-1]} vs {b.shape[-1]}) have no cosine")
    return _unit(a) @ _unit(b).T


@torch.no_grad()
def best_matches(a: Tensor, b: Tensor, k: int, chunk: int = 1024) -> CosineMatches:
    """The ``k`` features of ``b`` whose directions are most similar (largest cosine) to each row of ``a``.
    Chunked over ``a``, so the full [n, m] matrix is never held for large SAEs."""
    k = min(k, b.shape[0])
    if k < 1:
        raise SaefwError(f"k={k} must be at least 1")
    ub = _unit(b)
    values, indices = [], []
    for start in range(0, a.shape[0], chunk):
        cos = _unit(a[start:start + chunk]) @ ub.T
        v, i = cos.topk(k, dim=1)
        values.append(v)
        indices.append(i)
    return CosineMatches(torch.cat(values).cpu(), torch.cat(indices).cpu())
