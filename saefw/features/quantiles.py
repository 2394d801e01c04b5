"""Activation quantiles per feature: range edges, samples from each range, and a histogram — all from the
scan's uniform samples of firing tokens (exact when a feature fired fewer times than the sample holds)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saefw.features.running_top import RunningTop


def sample_values(sample: RunningTop) -> Tensor:
    """[d_sae, n] the sampled firing activations per feature, NaN where a slot is empty."""
    return torch.where(sample.filled(), sample.value, torch.nan).t().cpu()


def quantile_edges(values: Tensor, max_act: Tensor, n_ranges: int) -> Tensor:
    """[d_sae, n_ranges + 1] edges of ``n_ranges`` equal-count ranges of each feature's firing activations:
    edge k is the k/n_ranges quantile of the sampled values ``values`` [d_sae, n] (NaN = empty); the first edge
    is the smallest sampled value and the last the feature's exact maximum ``max_act`` [d_sae]. NaN for a
    feature that never fired."""
    levels = torch.linspace(0, 1, n_ranges + 1, dtype=torch.float64)
    edges = torch.nanquantile(values.double(), levels, dim=1).t().float()  # [d_sae, n_ranges + 1]
    edges[:, -1] = torch.where(torch.isnan(edges[:, -1]), edges[:, -1], max_act.float())
    return edges


def range_of(value: Tensor, edges: Tensor) -> Tensor:
    """Index k of the range [edge_k, edge_{k+1}] holding ``value`` [d_sae, m] given ``edges`` [d_sae, R + 1]
    (a value on an inner edge goes to the upper range; the top edge belongs to the last range); −1 for NaN."""
    inner = edges[:, 1:-1].contiguous()
    k = torch.searchsorted(inner, value.contiguous(), right=True)
    return torch.where(torch.isnan(value), torch.full_like(k, -1), k)


@dataclass
class QuantileSamples:
    """Per feature [d_sae, R, S]: ``value``, ``context``, ``position`` (−1 where a range has fewer than S
    samples) and ``acts`` [d_sae, R, S, W] windows, for R equal-count activation ranges with ``edges``
    [d_sae, R + 1]."""

    edges: Tensor
    value: Tensor
    context: Tensor
    position: Tensor
    acts: Tensor


def quantile_samples(pool: RunningTop, edges: Tensor, per_range: int) -> QuantileSamples:
    """Up to ``per_range`` tokens from each activation range, taken from the scan's uniform pool of firing
    tokens in the pool's random order (so they are a uniform sample within the range)."""
    d_sae, n_ranges = edges.shape[0], edges.shape[1] - 1
    order = pool.score.t().cpu().argsort(dim=1, descending=True)  # [d_sae, n]: random order
    value = torch.where(pool.filled(), pool.value, torch.nan).t().cpu().gather(1, order)
    context = pool.context.t().cpu().gather(1, order)
    position = pool.position.t().cpu().gather(1, order)
    acts = pool.acts.transpose(0, 1).cpu()
    acts = acts.gather(1, order[..., None].expand(-1, -1, acts.shape[-1]))
    which = range_of(value, edges)  # [d_sae, n]
    width = acts.shape[-1]
    out_value = torch.full((d_sae, n_ranges, per_range), torch.nan)
    out_ctx = torch.full((d_sae, n_ranges, per_range), -1, dtype=torch.long)
    out_pos = torch.full((d_sae, n_ranges, per_range), -1, dtype=torch.long)
    out_acts = torch.zeros(d_sae, n_ranges, per_range, width)
    for k in range(n_ranges):
        in_k = which == k
        # rank of each member within its range, in pool order; keep the first per_range
        rank = in_k.cumsum(1) - 1
        keep = in_k & (rank < per_range)
        feat, slot = keep.nonzero(as_tuple=True)
        r = rank[feat, slot]
        out_value[feat, k, r] = value[feat, slot]
        out_ctx[feat, k, r] = context[feat, slot]
        out_pos[feat, k, r] = position[feat, slot]
        out_acts[feat, k, r] = acts[feat, slot]
    return QuantileSamples(edges, out_value, out_ctx, out_pos, out_acts)


def histogram(values: Tensor, max_act: Tensor, fired: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Per-feature histogram of firing activations on ``bins`` equal bins over [0, max_act]: counts
    [d_sae, bins] estimated from the sampled ``values`` [d_sae, n] and scaled to the feature's ``fired`` count
    (exact when every firing token is in the sample), and edges [d_sae, bins + 1]."""
    d_sae = values.shape[0]
    top = max_act.float().clamp_min(1e-12)
    edges = torch.linspace(0, 1, bins + 1)[None, :] * top[:, None]
    valid = ~torch.isnan(values)
    idx = (values.nan_to_num(0) / top[:, None] * bins).long().clamp(0, bins - 1)
    counts = torch.zeros(d_sae, bins).scatter_add_(1, idx, valid.float())
    n_sampled = valid.sum(1).clamp_min(1)
    counts = counts * (fired.float() / n_sampled)[:, None]
    return counts, edges
