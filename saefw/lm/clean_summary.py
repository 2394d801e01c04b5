"""What a KL against the clean model needs of its next-token distributions, in rows of d floats instead of V.

With logits l = W h + b and p = softmax(l_clean) at each scored position (every position but BOS and the last),

    KL(p ‖ p_sae) = Σ_v p_v (log p_v − l_sae,v) + log Z_sae = log Z_sae − (pᵀW)·h_sae − (H(p) + pᵀb)

so the clean distribution enters only through ``p_clean_W`` = pᵀW [n, T−2, d] and ``offset`` = H(p) + pᵀb
[n, T−2] (float64), beside ``ce_clean`` [n] (each context's mean next-token CE). ``exact`` says whether the
model's logits are its unembedding's output (a model that transforms them afterwards, e.g. soft-capping, breaks
the identity). The evaluation that uses it: :class:`saefw.evals.loss_recovered.LossRecoveredEvaluator`. The
held-out harvest computes it from the same forward that stores the split's activations
(:mod:`saefw.sources.hf`), so a first evaluation runs the model once, like every later one.
"""
from __future__ import annotations

import torch
from torch import Tensor

# what the summary may take before evaluations rerun the clean forward instead (the evaluator's clean_cache_mb)
DEFAULT_LIMIT_MB = 1024
# contexts per forward when its logits are kept: 8 × 128 × 49,152 float32 logits of SmolLM2 are 200 MB
LOGITS_BATCH = 8


def summary_weights(lm, n_tokens: int, limit_mb: int = DEFAULT_LIMIT_MB) -> tuple[Tensor, Tensor | None] | None:
    """(W [V, d], b [V] or None) when a summary of ``n_tokens`` tokens can stand in for the clean forward: the
    unembedding is a plain float32 linear layer (nor TF32 on a GPU: bf16/fp16 weights or TF32 matmuls round each
    logit by ~1e-3 of its size, as much as a small KL itself) and the summary fits ``limit_mb``; else None."""
    affine = lm.unembedding_affine()
    if affine is None or n_tokens * lm.d_model * 4 > limit_mb * 2**20:
        return None
    W, b = affine
    reduced = W.device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
    if W.dtype not in (torch.float32, torch.float64) or reduced:
        return None
    return W, b


class CleanSummary:
    """Rows of the summary, filled batch by batch from clean forwards of contexts [0, n) in order."""

    def __init__(self, lm, n: int, context_size: int, weights: tuple[Tensor, Tensor | None]):
        # the rows are written in place: appended one by one, each small row landed between two contexts'
        # vocabulary-sized temporaries and the heap grew by ~100 MB per batch (saefw.app.allocator)
        self.lm, (self.W, self.b) = lm, weights
        positions = context_size - 2
        self.rows = {"ce_clean": torch.empty(n), "p_clean_W": torch.empty(n, positions, self.W.shape[1]),
                     "offset": torch.empty(n, positions, dtype=torch.float64)}
        self.filled, self.exact = 0, True

    @torch.no_grad()
    def add(self, tokens: Tensor, logits: Tensor, final: Tensor) -> None:
        """The next contexts' rows from their clean ``logits`` [B, T, V] and unembedding input ``final`` [B, T, d]."""
        W, b, i = self.W, self.b, self.filled
        # one context per batch is enough to tell a plain unembedding from a transformed one
        self.exact = self.exact and torch.allclose(self.lm.unembed(final[:1]), logits[:1], rtol=1e-5, atol=1e-5)
        for context, row in zip(logits, tokens):  # one context at a time: T × V floats, not B × T × V
            lp = torch.log_softmax(context[1:-1].float(), -1)
            p = lp.exp()
            # float32 p sums to 1 only within ~2e-6, an error the identity multiplies by log Z_sae (~20):
            # q = p / Σp, with the sums over V in float64, is normalised and differs from the exact
            # distribution only by float32 rounding of each log p: as close to both distributions' KL as
            # float64 throughout (tests/evals), at 15 s instead of 18 s for SmolLM2's 103 contexts at layer 25
            total = p.sum(-1, dtype=torch.float64)
            offset = total.log() - (p * lp).sum(-1, dtype=torch.float64) / total  # H(q)
            if b is not None:
                offset += (p @ b.float()).double() / total
            self.rows["ce_clean"][i] = -lp.gather(-1, row[2:, None].to(lp.device)).mean()
            self.rows["offset"][i] = offset
            self.rows["p_clean_W"][i] = (p @ W.float()) / total[:, None].float()
            i += 1
        self.filled = i

    def result(self) -> dict[str, Tensor]:
        """The summary of the contexts added so far, ``exact`` beside it."""
        return {**{k: v[: self.filled] for k, v in self.rows.items()}, "exact": torch.tensor(self.exact)}


def first_contexts(summary: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """The summary of the first ``n`` contexts of a longer one (each row depends only on its own context)."""
    return {k: v if v.ndim == 0 else v[:n] for k, v in summary.items()}
