"""Logit lens on decoder directions: which next tokens a feature promotes or suppresses directly."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saefw.errors import SaefwError


@dataclass
class LogitLens:
    """Per feature [d_sae, k]: the ``k`` tokens with the largest ``W_U · d_i`` (``promoted_ids`` / ``_values``,
    descending) and the ``k`` with the smallest (``suppressed_ids`` / ``_values``, ascending: most negative
    first)."""

    promoted_ids: Tensor
    promoted_values: Tensor
    suppressed_ids: Tensor
    suppressed_values: Tensor


def unembedding(model: nn.Module) -> Tensor:
    """The model's unembedding matrix W_U [vocab, d_model] (the LM head's weight)."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), Tensor):
        raise SaefwError(f"{type(model).__name__} has no output embedding to read a logit lens from")
    return head.weight.detach()


@torch.no_grad()
def logit_lens(W_U: Tensor, directions: Tensor, k: int, chunk: int = 256) -> LogitLens:
    """Top-``k`` promoted and suppressed tokens of each direction: logits_i = W_U · d_i for ``directions``
    [d_sae, d_out] (unit decoder rows; d_out = d_model: the SAE writes one residual-stream-sized site, e.g. a
    transcoder's mlp_out) and ``W_U`` [vocab, d_model]. Chunked over features, so the
    [vocab, d_sae] logit matrix is never held at once. The final norm is not applied: this is the direct
    effect of the direction on the unembedding, as in the logit lens."""
    if directions.shape[-1] != W_U.shape[-1]:
        raise SaefwError(f"the decoder rows have {directions.shape[-1]} columns but the unembedding reads "
                         f"d_model={W_U.shape[-1]}: a logit lens needs directions in one residual-stream-sized site")
    k = min(k, W_U.shape[0])
    W = W_U.float()
    parts = []
    for d in directions.float().to(W.device).split(chunk):
        logits = d @ W.t()  # [chunk, vocab]
        hi = logits.topk(k, dim=-1)
        lo = logits.topk(k, dim=-1, largest=False)
        parts.append((hi.indices, hi.values, lo.indices, lo.values))
    return LogitLens(*(torch.cat([p[i] for p in parts]).cpu() for i in range(4)))
