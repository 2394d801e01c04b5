"""Filling activation stores: one forward pass of the model per batch of contexts serves every store asked for.

Stores of one harvest share the model, corpus split, context size and dtype and differ in (layer, site); their
shards are aligned (shard j holds contexts [j·S, (j+1)·S) of the split in every store), so a store that already
has a shard is skipped for it, a corrupt shard is harvested again in place, and an interrupted harvest resumes
after the last finished shard.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from saefw.app.allocator import release_freed_memory
from saefw.lm.clean_summary import LOGITS_BATCH
from saefw.store.activation_store import ActivationStore

log = logging.getLogger(__name__)


@dataclass
class HarvestReport:
    seconds: float = 0.0  # time spent harvesting (0 when every store already had what was asked)
    tokens: int = 0  # tokens harvested per hook point
    repaired: int = 0  # corrupt shards harvested again


def fill_stores(lm, stores: list[ActivationStore], documents: Callable[[], Iterable[str]], n_tokens: int,
                shard_contexts: int = 256, forward_batch: int = 16, desc: str = "harvesting",
                on_logits: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
                ) -> HarvestReport:
    """Make every store hold at least ``n_tokens`` tokens (or the whole corpus split, when it is smaller).

    ``documents()`` returns the split's documents in their fixed order. Each store's file lock is held while it
    may be written, so a concurrent job with the same key waits and then finds the shards already there. ``lm``
    may be a function returning the model, called only when something has to be harvested.

    ``on_logits(first, contexts, logits, final)``: the harvest's forwards then run to the end (in batches of
    :data:`~saefw.lm.clean_summary.LOGITS_BATCH` contexts) and hand each batch's logits and unembedding input to
    it, ``first`` the batch's first context's index in the split; it is called while the locks are held, before
    the shards are written."""
    context_size = stores[0].key.context_size
    per_ctx = context_size - 1
    want_contexts = math.ceil(n_tokens / per_ctx)
    want_shards = math.ceil(want_contexts / shard_contexts)
    report = HarvestReport()
    with ExitStack() as locks:
        for store in sorted(stores, key=lambda s: str(s.path)):
            store.path.parent.mkdir(parents=True, exist_ok=True)
            locks.enter_context(store.lock)
        todo = {i: js for i, store in enumerate(stores)
                if (js := _shards_to_write(store, want_contexts, want_shards, shard_contexts, report))}
        if not todo:
            return report
        if callable(lm):
            lm = lm()
        last = max(max(js) for js in todo.values())
        n_new = sum(len(js) for js in todo.values()) // len(todo)
        t0 = time.time()
        bar = tqdm(total=n_new * shard_contexts * per_ctx, desc=desc, unit="tok", unit_scale=True, leave=False)
        j = -1
        for j, contexts in enumerate(lm.iter_contexts(documents(), context_size, chunk=shard_contexts)):
            targets = [i for i, js in todo.items() if j in js]
            asked = shard_contexts
            if j == want_shards - 1:  # the last shard holds only what the budget needs
                asked = want_contexts - j * shard_contexts
                contexts = contexts[:asked]
            ended = contexts.shape[0] < asked  # the split ran out inside this shard
            if targets:
                acts = _harvest_shard(lm, contexts, [stores[i] for i in targets], forward_batch, bar,
                                      on_logits, j * shard_contexts)
                for i in targets:
                    stores[i].write(j, acts[(stores[i].key.layer, stores[i].key.site)], contexts)
                report.tokens += contexts.shape[0] * per_ctx
            if ended:  # the whole split is stored: later runs must not take the short shard for a small budget
                for i in todo:
                    stores[i].mark_exhausted()
                break
            if j >= last:
                break
        else:  # the corpus split ended before the budget: the stores that wanted more are complete
            for i, js in todo.items():
                if any(k > j for k in js):
                    stores[i].mark_exhausted()
        bar.close()
        release_freed_memory()  # the forwards' and shards' blocks must not stay under training's
        report.seconds = time.time() - t0
        if report.tokens:
            log.info("harvested %d tokens at %d hook point(s) in %.1f s (%.0f tokens/s)", report.tokens,
                     len(todo), report.seconds, report.tokens / max(report.seconds, 1e-9))
    return report


def _shards_to_write(store: ActivationStore, want_contexts: int, want_shards: int, shard_contexts: int,
                     report: HarvestReport) -> set[int]:
    """The shard indices ``store`` must (re)write to hold ``want_contexts``: the missing ones, a short last one of
    an earlier, smaller budget, and corrupt ones (counted in ``report.repaired``)."""
    m = store.manifest()
    if m is None:
        have = 0
    elif m.exhausted or m.n_contexts >= want_contexts:
        have = len(m.shards)
    else:  # only the last shard can be short (an earlier, smaller budget): harvest it again in full
        have = sum(1 for s in m.shards if s.n_contexts == shard_contexts)
    bad = store.corrupt_shards()
    for j in bad:
        log.warning("activation store shard %s is corrupt (checksum mismatch); harvesting it again",
                    store.path / m.shards[j].file)
    more = [] if (m and m.exhausted) else range(have, want_shards)
    report.repaired += len(bad) if (bad or more) else 0
    return set(bad) | set(more)


def _harvest_shard(lm, contexts: torch.Tensor, stores: list[ActivationStore], forward_batch: int, bar,
                   on_logits: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
                   first: int = 0) -> dict[tuple[int, str], torch.Tensor]:
    """Activations [n_contexts·(T−1), d] (BOS dropped) of ``contexts`` at each store's hook point; with
    ``on_logits``, from forwards run to the end (see :func:`fill_stores`; ``first``: the index of ``contexts[0]``
    in the split)."""
    points = sorted({(s.key.layer, s.key.site) for s in stores})
    parts: dict[tuple[int, str], list[torch.Tensor]] = {p: [] for p in points}
    step = forward_batch if on_logits is None else min(forward_batch, LOGITS_BATCH)
    for k, batch in enumerate(contexts.split(step)):
        if on_logits is None:
            captured = lm.capture(batch, points)
        else:
            captured, logits, final = lm.capture_and_logits(batch, points)
            on_logits(first + k * step, batch, logits, final)
            del logits, final
        for p in points:
            x = captured[p][:, 1:]
            parts[p].append(x.reshape(-1, x.shape[-1]).float().cpu())
        bar.update(batch.shape[0] * (batch.shape[1] - 1))
    return {p: torch.cat(v) for p, v in parts.items()}
