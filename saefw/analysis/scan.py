"""One streaming pass over text: every feature's firing statistics, top activating contexts and a uniform
sample of its firing tokens, in memory bounded by the SAE's width (never by the number of tokens scanned).

Position 0 of every context is BOS: it is neither scored nor recorded, as everywhere in saefw.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saefw.analysis.running_top import RunningTop


@dataclass(frozen=True)
class ScanSettings:
    """How much the scan keeps per feature.

    ``top_n`` contexts by maximum activation (at most one per context), each with a window of ``before`` tokens
    before and ``after`` after its max token; ``pool`` random firing tokens with their windows (quantile
    samples are drawn from them); ``sample`` random firing activations (no windows; they estimate quantile
    edges and the histogram). ``seed`` fixes the random keys."""

    top_n: int = 20
    before: int = 24
    after: int = 8
    pool: int = 64
    sample: int = 512
    seed: int = 0


@dataclass
class ScanResult:
    """What a scan found. Per feature [d_sae]: ``fired`` (tokens with f > 0), ``act_sum`` (Σ f over all tokens),
    ``max_act``; ``top`` (top contexts), ``pool`` (random firing tokens with windows), ``sample`` (random firing
    activations, value only); ``tokens`` [n_contexts, T] the scanned contexts; ``n_tokens`` scanned (non-BOS)."""

    tokens: Tensor
    n_tokens: int
    fired: Tensor
    act_sum: Tensor
    max_act: Tensor
    top: RunningTop
    pool: RunningTop
    sample: RunningTop


def context_batches(lm, docs: Iterable[str], context_size: int, n_contexts: int, batch: int) -> Iterator[Tensor]:
    """The first ``n_contexts`` contexts of ``docs`` (tokenised and cut exactly as evaluation does, BOS first,
    see :meth:`saefw.lm.LanguageModel.iter_contexts`), in batches [≤ batch, context_size]."""
    rows = (row for chunk in lm.iter_contexts(docs, context_size, chunk=64) for row in chunk)
    rows = itertools.islice(rows, n_contexts)
    while part := list(itertools.islice(rows, batch)):
        yield torch.stack(part)


@torch.no_grad()
def scan(lm, sae, contexts: Iterable[Tensor], settings: ScanSettings, n_contexts: int | None = None,
         device: str | torch.device = "cpu") -> ScanResult:
    """Encode the hook activations of ``contexts`` (batches [B, T], BOS first) with ``sae`` and keep, per
    feature: count of firing tokens, Σ f, max f, the ``top_n`` contexts with the highest max activation (one
    entry per context, at its argmax position), and two uniform samples of firing tokens (``pool`` with
    windows, ``sample`` values only) drawn with shared random keys, so the pool is a subsample of the sample.
    ``n_contexts`` only sizes the progress bar."""
    d_sae = sae.d_sae
    window = (settings.before, settings.after)
    top = RunningTop(settings.top_n, d_sae, window, device)
    pool = RunningTop(settings.pool, d_sae, window, device)
    sample = RunningTop(settings.sample, d_sae, None, device)
    fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    act_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
    max_act = torch.zeros(d_sae, device=device)
    gen = torch.Generator().manual_seed(settings.seed)
    seen, kept = 0, []
    bar = tqdm(total=n_contexts, desc="scanning features", unit="ctx")
    for batch in contexts:
        B, T = batch.shape
        x = lm.activations(batch).to(device, torch.float32)
        f = sae.encode(x.reshape(B * T, -1)).reshape(B, T, d_sae).float()
        f[:, 0] = 0  # BOS: never scored
        body = f[:, 1:].reshape(-1, d_sae)  # [B·(T−1), d_sae]
        fires = body > 0
        fired += fires.sum(0)
        act_sum += body.sum(0, dtype=torch.float64)
        max_act = torch.maximum(max_act, body.max(0).values)

        # top contexts: one candidate per context, scored by its max activation
        ctx_max, ctx_pos = f[:, 1:].max(dim=1)
        rows = torch.arange(B, device=device)
        top.update(ctx_max, ctx_max, rows, ctx_pos + 1, f, seen)

        # uniform samples of firing tokens: keep the largest i.i.d. uniform keys; non-firing tokens get −1
        keys = torch.rand(body.shape, generator=gen).to(device).masked_fill_(~fires, -1.0)
        tok_row = rows.repeat_interleave(T - 1)
        tok_pos = torch.arange(1, T, device=device).repeat(B)
        pool.update(keys, body, tok_row, tok_pos, f, seen)
        sample.update(keys, body, tok_row, tok_pos, f, seen)

        kept.append(batch.to(torch.int32).cpu())
        seen += B
        bar.update(B)
    bar.close()
    tokens = torch.cat(kept) if kept else torch.zeros(0, 0, dtype=torch.int32)
    return ScanResult(tokens=tokens, n_tokens=int(tokens[:, 1:].numel()), fired=fired.cpu(),
                      act_sum=act_sum.cpu(), max_act=max_act.cpu(), top=top, pool=pool, sample=sample)
