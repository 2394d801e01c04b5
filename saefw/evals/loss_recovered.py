from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from saefw.evals.base import Evaluator
from saefw.evals.stats import mean_se, ratio_se
from saefw.lm import next_token_ce
from saefw.registry import register


@dataclass
class LossRecoveredConfig:
    batch_contexts: int = 8  # contexts per full-model forward
    max_contexts: int | None = None  # None: every held-out context of the source
    # periodic evaluations during training score only this many contexts: each costs two full-model forwards,
    # and on a CPU that would otherwise dominate a short run (the final evaluation uses max_contexts)
    contexts_during_training: int = 8


@register("evaluator", "loss_recovered", LossRecoveredConfig)
class LossRecoveredEvaluator(Evaluator):
    """Splices the SAE into the model at its hook point and scores next-token prediction on held-out text.

    ce_clean: the model as is; ce_sae: hook activation replaced by x̂ = decode(encode(x)); ce_zero: replaced by 0.
    ce_loss_recovered = (ce_zero − ce_sae) / (ce_zero − ce_clean);  ce_delta = ce_sae − ce_clean;
    kl_div = E_pos[KL(p_clean ‖ p_sae)] over next-token distributions.
    ``<metric>_se``: standard errors over held-out contexts (:mod:`saefw.evals.stats`): the delta method for the
    ratio ce_loss_recovered, the standard error of the per-context mean for ce_delta and kl_div.
    BOS positions are neither replaced nor scored. ce_zero does not depend on the SAE: it is computed once per
    held-out split and number of contexts and cached by the source (on disk beside the activation store)."""

    requires = ("lm",)

    def compute(self):
        lm, sae = self.source.lm, self.sae
        n_ctx = self.cfg.max_contexts if self.final else self.cfg.contexts_during_training
        tokens = self.source.eval_tokens[:n_ctx]
        sae_device = next(sae.parameters()).device

        def reconstruct(x):
            return sae.decode(sae.encode(x.to(sae_device, torch.float32))).to(x.device)

        batches = tokens.split(self.cfg.batch_contexts)
        zero = self.source.cached(f"ce_zero_{len(tokens)}", lambda: {"ce_zero": [
            v for tb in tqdm(batches, desc="ce_zero (once per split)", unit="batch", leave=False)
            for v in next_token_ce(lm.logits(tb, replace=torch.zeros_like), tb).mean(-1).tolist()]})
        clean, spliced, kl = [], [], []
        for tb in tqdm(batches, desc="ce_loss_recovered", unit="batch", leave=False):
            lc, ls = lm.logits(tb), lm.logits(tb, replace=reconstruct)
            clean += next_token_ce(lc, tb).mean(-1).tolist()
            spliced += next_token_ce(ls, tb).mean(-1).tolist()
            lp_clean, lp_sae = torch.log_softmax(lc[:, 1:-1], -1), torch.log_softmax(ls[:, 1:-1], -1)
            kl += (lp_clean.exp() * (lp_clean - lp_sae)).sum(-1).mean(-1).tolist()
        c, s, z, k = (np.asarray(v, np.float64) for v in (clean, spliced, zero["ce_zero"], kl))
        return {"ce_clean": c.mean(), "ce_sae": s.mean(), "ce_zero": z.mean(), "ce_delta": s.mean() - c.mean(),
                "ce_loss_recovered": (z - s).sum() / (z - c).sum(), "kl_div": k.mean(),
                "ce_loss_recovered_se": ratio_se(z - s, z - c), "ce_delta_se": mean_se(s - c),
                "kl_div_se": mean_se(k)}
