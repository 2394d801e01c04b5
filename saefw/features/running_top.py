"""A running top-n per feature: the n best candidates seen so far for every feature, in bounded memory.

Each candidate is a (context, position) with a score and a value; for the winners it also keeps the feature's
activations in a token window around the position, taken from the batch while it is still in memory. The scan
uses it twice: scored by a context's maximum activation (top activating contexts), and scored by a random key
(a uniform sample of the tokens where a feature fires: keeping the n largest of i.i.d. uniform keys is
sampling n items without replacement).
"""
from __future__ import annotations

import torch
from torch import Tensor


class RunningTop:
    """The ``n`` highest-scoring candidates per feature, over ``d_sae`` features.

    Attributes (slot-major, [n, d_sae]; a slot never filled has score −inf and context −1):
    ``score``, ``value`` (the activation at the candidate token), ``context`` (global index of the context),
    ``position`` (token position in it); ``acts`` [n, d_sae, before + 1 + after] the feature's activations in
    the window ``position − before … position + after`` (0 outside the context and at BOS), or None when
    ``window`` is None."""

    def __init__(self, n: int, d_sae: int, window: tuple[int, int] | None, device: torch.device | str = "cpu"):
        self.n, self.d_sae, self.window = n, d_sae, window
        self.score = torch.full((n, d_sae), float("-inf"), device=device)
        self.value = torch.zeros(n, d_sae, device=device)
        self.context = torch.full((n, d_sae), -1, dtype=torch.long, device=device)
        self.position = torch.full((n, d_sae), -1, dtype=torch.long, device=device)
        width = None if window is None else window[0] + 1 + window[1]
        self.acts = None if width is None else torch.zeros(n, d_sae, width, device=device)

    def update(self, score: Tensor, value: Tensor, row: Tensor, position: Tensor, f: Tensor,
               context_offset: int) -> None:
        """Merge M candidates: ``score``/``value`` [M, d_sae]; ``row`` [M] the candidate's context in the batch;
        ``position`` [M] (same for every feature) or [M, d_sae]; ``f`` [B, T, d_sae] the batch's activations;
        the batch's first context has global index ``context_offset``."""
        n = self.n
        best, idx = torch.cat([self.score, score]).topk(n, dim=0)  # [n, d_sae]
        from_old = idx < n
        old = idx.clamp(max=n - 1)
        new = (idx - n).clamp(min=0)
        new_row = row[new]
        new_pos = position[new] if position.ndim == 1 else position.gather(0, new)
        self.value = torch.where(from_old, self.value.gather(0, old), value.gather(0, new))
        self.context = torch.where(from_old, self.context.gather(0, old), new_row + context_offset)
        self.position = torch.where(from_old, self.position.gather(0, old), new_pos)
        self.score = best
        if self.acts is not None:
            acts = self.acts.gather(0, old[..., None].expand(-1, -1, self.acts.shape[-1]))
            slot, feat = (~from_old).nonzero(as_tuple=True)
            if len(slot):
                acts[slot, feat] = window_of(f, new_row[slot, feat], new_pos[slot, feat], feat, self.window)
            self.acts = acts

    def filled(self) -> Tensor:
        """[n, d_sae] True where the slot holds a token where the feature fired (value > 0)."""
        return (self.context >= 0) & (self.value > 0)

    def feature_major(self) -> dict[str, Tensor]:
        """The kept candidates as CPU tensors indexed by feature first — ``value``, ``context``, ``position``
        [d_sae, n] and ``acts`` [d_sae, n, W] — with slots where the feature did not fire emptied (value 0,
        context and position −1, acts 0). Slots stay in descending score order."""
        filled = self.filled()
        out = {"value": torch.where(filled, self.value, 0.0), "context": torch.where(filled, self.context, -1),
               "position": torch.where(filled, self.position, -1)}
        out = {k: v.t().cpu().contiguous() for k, v in out.items()}
        if self.acts is not None:
            out["acts"] = (self.acts * filled[..., None]).transpose(0, 1).cpu().contiguous()
        return out


def window_of(f: Tensor, row: Tensor, position: Tensor, feature: Tensor, window: tuple[int, int]) -> Tensor:
    """Activations f[row, position + o, feature] for o in −before … after, [K, before + 1 + after]; 0 outside
    the context and at the BOS position 0 (never scored)."""
    before, after = window
    offsets = torch.arange(-before, after + 1, device=f.device)
    pos = position[:, None] + offsets
    valid = (pos >= 1) & (pos < f.shape[1])
    vals = f[row[:, None], pos.clamp(0, f.shape[1] - 1), feature[:, None]]
    return vals * valid
