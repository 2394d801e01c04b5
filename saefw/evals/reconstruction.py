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
    Q_c − 2·x̄·S_c + n_c‖x̄‖² (x̄ the mean over all tokens, known only at the end)."""

    def begin(self, sae, source):
        super().begin(sae, source)
        self.per_ctx = getattr(source, "tokens_per_context", None) or 1
        self.err, self.sumsq, self.sums, self.n = [], [], [], 0

    def update(self, x, f, x_hat):
        x64 = x.double()
        rows = x64.shape[0] // self.per_ctx * self.per_ctx  # whole contexts (sources keep batches aligned)
        shape = (-1, self.per_ctx, x64.shape[-1])
        self.err.append((x64 - x_hat.double())[:rows].pow(2).sum(-1).view(shape[:2]).sum(1).cpu())
        self.sumsq.append(x64[:rows].pow(2).sum(-1).view(shape[:2]).sum(1).cpu())
        self.sums.append(x64[:rows].view(shape).sum(1).cpu())
        self.n += rows

    def compute(self):
        if self.n == 0:
            return {}
        err, sumsq, sums = torch.cat(self.err), torch.cat(self.sumsq), torch.cat(self.sums)
        mean = sums.sum(0) / self.n
        var_c = sumsq - 2 * sums @ mean + self.per_ctx * mean.pow(2).sum()
        ev = 1.0 - err.sum().item() / var_c.sum().item()
        return {"mse": err.sum().item() / (self.n * mean.numel()), "explained_variance": ev, "nmse": 1.0 - ev,
                "explained_variance_se": ratio_se(err.numpy(), var_c.numpy())}
