"""The text windows an explainer is shown and the scorers test it on, read from the feature store.

Per feature: its top contexts (strongest first) and its quantile samples (from the highest activation range to
the lowest, taken round-robin so the first few span the whole range) come from the store; random windows of
the scanned text (with the feature's true activations, computed by the explain command) supply contexts where it
does not fire. :func:`split_examples` decides which window serves which purpose, never showing a scorer a
window the explanation was written from.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class Example:
    """A token window: ``tokens`` (display text of each token), ``acts`` (the feature's activation on each),
    and where it comes from: ``context`` (row of the store's tokens), ``position`` (of the window's max token,
    or of its anchor for random windows), ``kind`` (``top``, ``quantile`` or ``random``)."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    context: int
    position: int
    kind: str

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)

    @property
    def key(self) -> tuple[int, int]:
        return self.context, self.position

    def ref(self) -> list:
        """[context, position, kind]: how the saved results name the window."""
        return [self.context, self.position, self.kind]


def window_example(ids: Sequence[int], acts: Sequence[float], context: int, position: int, kind: str,
                   token_text: Callable[[list[int]], list[str]]) -> Example:
    """An :class:`Example` from window token ids (−1 = outside the context, dropped) and activations."""
    keep = [(i, float(a)) for i, a in zip(ids, acts) if i >= 0]
    texts = token_text([i for i, _ in keep]) if keep else []
    return Example(tuple(texts), tuple(a for _, a in keep), int(context), int(position), kind)


def store_examples(data, fid: int, token_text: Callable[[list[int]], list[str]]) -> tuple[list[Example], list[Example]]:
    """(top, quantile) windows of feature ``fid`` of a loaded feature store (empty slots skipped)."""
    top = data.top
    ctx, pos = top["context"][fid], top["position"][fid]
    ids = data.window_tokens(ctx, pos)
    tops = [window_example(ids[k].tolist(), top["acts"][fid, k].tolist(), int(ctx[k]), int(pos[k]), "top",
                           token_text) for k in range(len(ctx)) if int(ctx[k]) >= 0]
    q = data.quantiles
    qctx, qpos = q["context"][fid], q["position"][fid]  # [R, S]
    qids = data.window_tokens(qctx, qpos)
    ranges = []
    for r in reversed(range(qctx.shape[0])):  # the highest range first
        ranges.append([window_example(qids[r, s].tolist(), q["acts"][fid, r, s].tolist(), int(qctx[r, s]),
                                      int(qpos[r, s]), "quantile", token_text)
                       for s in range(qctx.shape[1]) if int(qctx[r, s]) >= 0])
    quantile = [ex for group in _round_robin(ranges) for ex in group]
    return tops, quantile


def _round_robin(lists: list[list]) -> list[list]:
    out, k = [], 0
    while any(k < len(lst) for lst in lists):
        out.append([lst[k] for lst in lists if k < len(lst)])
        k += 1
    return out


def interleave(a: list, b: list) -> list:
    """a0, b0, a1, b1, ... then the rest of the longer list."""
    out = []
    for k in range(max(len(a), len(b))):
        out += ([a[k]] if k < len(a) else []) + ([b[k]] if k < len(b) else [])
    return out


def random_windows(f: Tensor, tokens: Tensor, rows: Sequence[int], before: int, after: int,
                   token_text: Callable[[list[int]], list[str]], rng: random.Random, n_quiet: int, n_any: int
                   ) -> tuple[list[Example], list[Example]]:
    """From the activations ``f`` [n_rows, T] of one feature on the contexts ``tokens`` [n_rows, T] (store rows
    ``rows``), pick random windows (``before`` + 1 + ``after`` tokens around an anchor t ≥ 1): ``n_quiet`` where
    the feature is 0 on every token, and ``n_any`` anywhere. Returns (quiet, any)."""
    n, T = tokens.shape
    anchors = [(r, t) for r in range(n) for t in range(1, T)]
    rng.shuffle(anchors)
    quiet, anywhere = [], []
    for r, t in anchors:
        lo, hi = max(1, t - before), min(T, t + after + 1)
        acts = f[r, lo:hi]
        if len(anywhere) < n_any:
            anywhere.append(window_example(tokens[r, lo:hi].tolist(), acts.tolist(), rows[r], t, "random",
                                           token_text))
        elif len(quiet) < n_quiet and not bool((acts > 0).any()):
            quiet.append(window_example(tokens[r, lo:hi].tolist(), acts.tolist(), rows[r], t, "random",
                                        token_text))
        if len(quiet) >= n_quiet and len(anywhere) >= n_any:
            break
    return quiet, anywhere


@dataclass
class ExampleSets:
    """Which windows serve which purpose for one feature: ``explain`` (shown to the explainer), ``positives``
    (held-out windows where it fires: detection and fuzzing), ``negatives`` (windows where it never fires:
    detection), ``simulation`` (held-out firing windows and random windows: simulation)."""

    explain: list[Example] = field(default_factory=list)
    positives: list[Example] = field(default_factory=list)
    negatives: list[Example] = field(default_factory=list)
    simulation: list[Example] = field(default_factory=list)

    def refs(self) -> dict:
        return {k: [e.ref() for e in getattr(self, k)] for k in ("explain", "positives", "negatives", "simulation")}


def split_examples(top: list[Example], quantile: list[Example], quiet: list[Example], anywhere: list[Example],
                   n_explain: int, n_positive: int, n_negative: int, n_sim_positive: int,
                   n_sim_random: int, n_explain_quantile: int = 0) -> ExampleSets:
    """The explainer sees the ``n_explain`` strongest contexts and the first ``n_explain_quantile`` quantile
    samples (one per range, from the highest); the held-out positives alternate the remaining quantile samples
    (across the activation range) and the remaining top contexts, skipping any window the explainer saw (same
    context and position) or already taken; simulation uses the first ``n_sim_positive`` positives and
    ``n_sim_random`` random windows."""
    explain, seen = [], set()
    for e in top[:n_explain] + quantile[:n_explain_quantile]:
        if e.key not in seen:
            seen.add(e.key)
            explain.append(e)
    held = []
    for e in interleave(quantile[n_explain_quantile:], top[n_explain:]):
        if e.key not in seen:
            seen.add(e.key)
            held.append(e)
    positives = held[:n_positive]
    return ExampleSets(explain=explain, positives=positives, negatives=quiet[:n_negative],
                       simulation=positives[:n_sim_positive] + anywhere[:n_sim_random])
