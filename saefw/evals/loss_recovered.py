from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from saefw.evals.base import Evaluator
from saefw.registry import register
from saefw.lm import next_token_ce


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
    BOS positions are neither replaced nor scored. ce_clean and ce_zero do not depend on the SAE, so they are
    computed once per (source, number of contexts) and reused at every evaluation."""

    requires = ("lm",)

    def compute(self):
        lm, sae = self.source.lm, self.sae
        n_ctx = self.cfg.max_contexts if self.final else self.cfg.contexts_during_training
        tokens = self.source.eval_tokens[:n_ctx]
        cache = self.source.__dict__.setdefault("_ce_baselines", {})
        baseline = cache.get(len(tokens))
        sae_device = next(sae.parameters()).device

        def reconstruct(x):
            return sae.decode(sae.encode(x.to(sae_device, torch.float32))).to(x.device)

        ce_clean = ce_sae = ce_zero = kl = 0.0
        n = 0
        batches = tokens.split(self.cfg.batch_contexts)
        for tb in tqdm(batches, desc="ce_loss_recovered", unit="batch", leave=False):
            clean = lm.logits(tb)
            spliced = lm.logits(tb, replace=reconstruct)
            ce_clean += next_token_ce(clean, tb).sum().item()
            ce_sae += next_token_ce(spliced, tb).sum().item()
            lp_clean = torch.log_softmax(clean[:, 1:-1], -1)
            lp_sae = torch.log_softmax(spliced[:, 1:-1], -1)
            kl += (lp_clean.exp() * (lp_clean - lp_sae)).sum().item()
            if baseline is None:
                ce_zero += next_token_ce(lm.logits(tb, replace=torch.zeros_like), tb).sum().item()
            n += lp_clean.shape[0] * lp_clean.shape[1]
        ce_clean, ce_sae, kl = ce_clean / n, ce_sae / n, kl / n
        if baseline is None:
            baseline = cache[len(tokens)] = (ce_clean, ce_zero / n)
        ce_zero = baseline[1]
        return {"ce_clean": ce_clean, "ce_sae": ce_sae, "ce_zero": ce_zero, "ce_delta": ce_sae - ce_clean,
                "ce_loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean), "kl_div": kl}
