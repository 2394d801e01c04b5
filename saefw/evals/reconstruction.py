from __future__ import annotations

from dataclasses import dataclass

import torch

from saefw.evals.base import Evaluator
from saefw.evals.stats import ratio_se
from saefw.registry import register


@dataclass
class ReconstructionConfig:
    pass


@register("evaluator", "reconstruction", ReconstructionConfig)
class ReconstructionEvaluator(Evaluator):
    """mse = Σ‖x − x̂‖² / (N·d);  explained_variance = 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²;  nmse = 1 − EV;
    explained_variance_se: the ratio's standard error over held-out contexts (see :mod:`saefw.evals.stats`).

    Sums are accumulated per context in float64, so the held-out split never has to fit in memory at once:
    with S_c = Σ_{t∈c} x_t and Q_c = Σ_{t∈c} ‖x_t‖², a context's share of the total variance is
    Q_c − 2·x̄·S_c + n_c‖x̄‖² (x̄ the mean over all tokens, known only at the end).

    A target written at several hook points (a crosscoder's layers: the source's ``target_segments``) also gets
    ``explained_variance_<segment>`` (and its ``_se``) per point, the same formula over that point's columns."""

    def begin(self, sae, source):
        super().begin(sae, source)
        self.per_ctx = getattr(source, "tokens_per_context", None) or 1
        self.segments = getattr(source, "target_segments", None) or []
        self.err, self.sumsq, self.sums, self.n = [], [], [], 0

    def _per_segment(self, sq: torch.Tensor) -> torch.Tensor:
        """Squared entries [rows, d] → per context, the total and each segment's sum [n_ctx, 1 + #segments]."""
        parts = [sq.sum(-1, keepdim=True)]
        if self.segments:
            parts += [p.sum(-1, keepdim=True) for p in sq.split([w for _, w in self.segments], -1)]
        return torch.cat(parts, -1).view(-1, self.per_ctx, len(parts)).sum(1).cpu()

    def update(self, x, f, x_hat):
        x64 = x.double()
        rows = x64.shape[0] // self.per_ctx * self.per_ctx  # whole contexts (sources keep batches aligned)
        self.err.append(self._per_segment((x64 - x_hat.double())[:rows].pow(2)))
        self.sumsq.append(self._per_segment(x64[:rows].pow(2)))
        self.sums.append(x64[:rows].view(-1, self.per_ctx, x64.shape[-1]).sum(1).cpu())
        self.n += rows

    def compute(self):
        if self.n == 0:
            return {}
        err, sumsq, sums = torch.cat(self.err), torch.cat(self.sumsq), torch.cat(self.sums)
        mean = sums.sum(0) / self.n
        cols = [slice(None)] + list(_column_slices([w for _, w in self.segments]))
        var_c = torch.stack([sumsq[:, j] - 2 * sums[:, c] @ mean[c] + self.per_ctx * mean[c].pow(2).sum()
                             for j, c in enumerate(cols)], -1)
        ev = 1.0 - err.sum(0) / var_c.sum(0)
        out = {"mse": err[:, 0].sum().item() / (self.n * mean.numel()), "explained_variance": ev[0].item(),
               "nmse": 1.0 - ev[0].item(), "explained_variance_se": ratio_se(err[:, 0].numpy(), var_c[:, 0].numpy())}
        for j, (name, _) in enumerate(self.segments, start=1):
            out[f"explained_variance_{name}"] = ev[j].item()
            out[f"explained_variance_{name}_se"] = ratio_se(err[:, j].numpy(), var_c[:, j].numpy())
        return out


def _column_slices(widths: list[int]):
    start = 0
    for w in widths:
        yield slice(start, start + w)
        start += w
