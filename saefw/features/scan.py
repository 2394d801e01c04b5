"""One streaming pass over text: every feature's firing statistics, top activating contexts and a uniform
sample of its firing tokens, in memory bounded by the SAE's width (never by the number of tokens scanned).

Position 0 of every context is BOS: it is neither scored nor recorded, as everywhere in saefw.

The hook activations come from the model, or, for the first contexts of a split that a float32 activation store
already holds (training harvested them: the held-out split's first ``eval_contexts``, the train split's first
``total_tokens``), from that store (:class:`StoredActivations`): they are the model's own values, and the scan
then runs the model only for the contexts beyond it.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saefw.errors import SaefwError
from saefw.features.running_top import RunningTop
from saefw.store.activation_store import ActivationStore, CorruptShardError

log = logging.getLogger(__name__)
Activations = Callable[[Tensor, int], Tensor]
"""(contexts [B, T], row of the first one in the scanned stream) → their hook activations [B, T−1, d], BOS
dropped."""


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
    see :meth:`saefw.lm.model.LanguageModel.iter_contexts`), in batches [≤ batch, context_size]."""
    rows = (row for chunk in lm.iter_contexts(docs, context_size, chunk=64) for row in chunk)
    rows = itertools.islice(rows, n_contexts)
    while part := list(itertools.islice(rows, batch)):
        yield torch.stack(part)


def live_activations(lm) -> Activations:
    """Every context's activations from a forward of ``lm`` stopped at its hook."""
    return lambda batch, first: lm.activations(batch)[:, 1:]


class StoredActivations:
    """The activations of the first contexts of a split read from a float32 ``store`` of it (shard j holds the
    split's contexts [j·S, (j+1)·S)), and from ``lm`` for the contexts beyond them.

    A stored context is used only when its token ids equal the scanned ones (the store key covers the model's
    weights but not its tokenizer files); from the first that differs, or a shard that fails its checksum, on,
    every context comes from the model, with a warning. One shard is held in memory at a time. ``from_store`` and
    ``from_model`` count the contexts served each way."""

    def __init__(self, store: ActivationStore, lm):
        self.store, self.lm = store, lm
        self.manifest = store.manifest()
        sizes = [s.n_contexts for s in self.manifest.shards] if self.manifest else []
        self.starts = list(itertools.accumulate(sizes, initial=0))  # first context of each shard, then the end
        self.n_stored = self.starts[-1]
        self._shard: tuple[int, Tensor, Tensor] | None = None  # (index, activations [n, T−1, d], tokens [n, T])
        self.from_store = self.from_model = 0

    def _read(self, j: int) -> tuple[Tensor, Tensor]:
        if self._shard is None or self._shard[0] != j:
            tokens = self.store.read_tokens(j, self.manifest)
            acts = self.store.read(j, self.manifest).view(len(tokens), tokens.shape[1] - 1, -1)
            self._shard = (j, acts, tokens)
        return self._shard[1], self._shard[2]

    def _stored(self, batch: Tensor, first: int) -> list[Tensor]:
        """Activations of the leading rows of ``batch`` the store holds (fewer when a row's tokens differ)."""
        parts, row = [], first
        while row < min(first + len(batch), self.n_stored):
            j = next(k for k in range(len(self.starts) - 1) if row < self.starts[k + 1])
            acts, tokens = self._read(j)
            a, b = row - self.starts[j], min(first + len(batch), self.starts[j + 1]) - self.starts[j]
            same = (tokens[a:b] == batch[row - first: row - first + b - a].cpu()).all(1)
            n_same = int(same.long().cumprod(0).sum())
            parts.append(acts[a:a + n_same])
            row += n_same
            if n_same < b - a:
                self._give_up(f"context {row} of the split has other tokens than the store holds")
                break
        return parts

    def _give_up(self, why: str) -> None:
        log.warning("activation store %s: %s; the remaining contexts come from the model", self.store.path, why)
        self.n_stored = 0

    def __call__(self, batch: Tensor, first: int) -> Tensor:
        try:
            parts = self._stored(batch, first) if first < self.n_stored else []
        except (CorruptShardError, OSError, ValueError) as exc:
            self._give_up(str(exc))
            parts = []
        n = sum(len(p) for p in parts)
        if n < len(batch):
            parts.append(self.lm.activations(batch[n:])[:, 1:].float().cpu())
        self.from_store += n
        self.from_model += len(batch) - n
        return torch.cat(parts) if len(parts) > 1 else parts[0]


@torch.no_grad()
def scan(lm, sae, contexts: Iterable[Tensor], settings: ScanSettings, n_contexts: int | None = None,
         device: str | torch.device = "cpu", activations: Activations | None = None) -> ScanResult:
    """Encode the hook activations of ``contexts`` (batches [B, T], BOS first) with ``sae`` and keep, per
    feature: count of firing tokens, Σ f, max f, the ``top_n`` contexts with the highest max activation (one
    entry per context, at its argmax position), and two uniform samples of firing tokens (``pool`` with
    windows, ``sample`` values only) drawn with shared random keys, so the pool is a subsample of the sample.
    ``activations`` gives each batch's activations (default: a forward of ``lm``; see :class:`StoredActivations`).
    ``n_contexts`` only sizes the progress bar."""
    activations = activations or live_activations(lm)
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
        x = activations(batch, seen).to(device, torch.float32)  # [B, T−1, d]
        if x.shape[-1] != sae.d_in:
            raise SaefwError(f"the scanned activations have {x.shape[-1]} columns but the SAE reads d_in={sae.d_in}: "
                             f"the hook point is not the one the SAE reads")
        f = torch.zeros(B, T, d_sae, device=device)  # BOS: never encoded, never scored
        f[:, 1:] = sae.encode(x.reshape(B * (T - 1), -1)).reshape(B, T - 1, d_sae).float()
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
