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
    # the clean model's last hidden states are cached (once per held-out split) up to this size, so an
    # evaluation pays one full-model forward instead of two; above it the clean forward is rerun each time
    clean_cache_mb: int = 1024


@register("evaluator", "loss_recovered", LossRecoveredConfig)
class LossRecoveredEvaluator(Evaluator):
    """Splices the SAE into the model at its hook point and scores next-token prediction on held-out text.

    ce_clean: the model as is; ce_sae: hook activation replaced by x̂ = decode(encode(x)); ce_zero: replaced by 0.
    ce_loss_recovered = (ce_zero − ce_sae) / (ce_zero − ce_clean);  ce_delta = ce_sae − ce_clean;
    kl_div = E_pos[KL(p_clean ‖ p_sae)] over next-token distributions.
    ``<metric>_se``: standard errors over held-out contexts (:mod:`saefw.evals.stats`): the delta method for the
    ratio ce_loss_recovered, the standard error of the per-context mean for ce_delta and kl_div.
    BOS positions are neither replaced nor scored. ce_zero and the clean forward do not depend on the SAE: they
    are computed once per held-out split and number of contexts and cached by the source (on disk beside the
    activation store; for the clean forward its last hidden states, from which the unembedding gives the clean
    logits again)."""

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
        finals = self._clean_finals(tokens, batches)
        clean, spliced, kl = [], [], []
        for i, tb in enumerate(tqdm(batches, desc="ce_loss_recovered", unit="batch", leave=False)):
            lc = lm.unembed(finals[i]) if finals is not None else lm.logits(tb)
            ls = lm.logits(tb, replace=reconstruct)
            lp_clean, lp_sae = torch.log_softmax(lc[:, 1:-1], -1), torch.log_softmax(ls[:, 1:-1], -1)
            clean += next_token_ce(lc, tb, lp_clean).mean(-1).tolist()
            spliced += next_token_ce(ls, tb, lp_sae).mean(-1).tolist()
            kl += (lp_clean.exp() * (lp_clean - lp_sae)).sum(-1).mean(-1).tolist()
        c, s, z, k = (np.asarray(v, np.float64) for v in (clean, spliced, zero["ce_zero"], kl))
        return {"ce_clean": c.mean(), "ce_sae": s.mean(), "ce_zero": z.mean(), "ce_delta": s.mean() - c.mean(),
                "ce_loss_recovered": (z - s).sum() / (z - c).sum(), "kl_div": k.mean(),
                "ce_loss_recovered_se": ratio_se(z - s, z - c), "ce_delta_se": mean_se(s - c),
                "kl_div_se": mean_se(k)}

    def _clean_finals(self, tokens, batches) -> tuple | None:
        """The clean model's last hidden states per batch, cached beside the held-out store, so each evaluation
        runs the model once (spliced) plus the unembedding instead of twice. None when they would take more than
        ``clean_cache_mb`` or the unembedding of the cached states does not reproduce the model's logits (a
        model that transforms its logits after the unembedding, e.g. soft-capping)."""
        lm = self.source.lm
        n_bytes = tokens.numel() * lm.d_model * 4
        if n_bytes > self.cfg.clean_cache_mb * 2**20:
            return None

        def compute():
            finals, exact = [], True
            for tb in tqdm(batches, desc="clean forward (once per split)", unit="batch", leave=False):
                logits, final = lm.logits_and_final(tb)
                exact = exact and torch.allclose(lm.unembed(final), logits, rtol=1e-5, atol=1e-5)
                finals.append(final.cpu())
            return {"final": torch.cat(finals), "exact": torch.tensor(exact)}

        cache = self.source.cached(f"clean_final_{len(tokens)}_{lm.precision_tag}", compute, tensors=True)
        if not bool(cache["exact"]):
            return None
        return cache["final"].split(self.cfg.batch_contexts)
