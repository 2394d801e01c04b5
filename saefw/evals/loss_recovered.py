from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from saefw.evals.base import Evaluator
from saefw.evals.stats import mean_se, ratio_se
from saefw.lm.clean_summary import DEFAULT_LIMIT_MB, CleanSummary, first_contexts, summary_weights
from saefw.lm.model import RESID_SITES, next_token_ce
from saefw.registry import register


@dataclass
class LossRecoveredConfig:
    batch_contexts: int = field(default=8, metadata={"help": "contexts per model forward"})
    max_contexts: int | None = field(default=None, metadata={"help": "null: every held-out context of the source"})
    # each costs a model forward per batch, and on a CPU that would otherwise dominate a short run
    contexts_during_training: int = field(default=8, metadata={"help": (
        "contexts scored by the periodic evaluations during training (the final one uses max_contexts)")})
    # so an evaluation pays one model forward instead of two
    clean_cache_mb: int = field(default=DEFAULT_LIMIT_MB, metadata={"help": (
        "what an evaluation needs of the clean model is cached (once per held-out split) up to this size; above "
        "it the clean forward is rerun each time")})
    # the same numbers as from the embeddings: tests/evals/test_loss_recovered.py
    from_hook: bool = field(default=True, metadata={"help": (
        "start every forward at the hook from the held-out split's stored residual stream, running only the "
        "blocks after it; false: each from the embeddings")})


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
    activation store; for the clean forward, what KL needs of the clean distribution: see :meth:`_clean_summary`),
    so an evaluation runs the model once, SAE spliced in. The clean summary comes from the forwards that harvest
    the held-out split, so the first evaluation does not pay for it either.

    Every forward starts at the hook (``from_hook``): the source holds the held-out contexts' residual stream
    there (:meth:`~saefw.sources.base.ActivationSource.eval_states`), so only the blocks after the hook, the
    final norm and the unembedding run — at layer 25 of 30, a fifth of a full forward. Zero-ablating a residual
    site leaves nothing that depends on the tokens downstream (every context then enters the later blocks as the
    same BOS state followed by zeros), so ce_zero there takes one context's forward, checked against a second."""

    requires = ("lm",)

    def compute(self):
        lm, sae = self.source.lm, self.sae
        n_ctx = self.cfg.max_contexts if self.final else self.cfg.contexts_during_training
        tokens = self.source.eval_tokens[:n_ctx]
        sae_device = next(sae.parameters()).device

        def reconstruct(x):
            return sae(x.to(sae_device, torch.float32))[0].to(x.device)

        states = self.source.eval_states(len(tokens)) if self.cfg.from_hook else None
        batches = list(zip(tokens.split(self.cfg.batch_contexts),
                           [None] * len(tokens) if states is None else states.split(self.cfg.batch_contexts)))
        zero = self.source.cached(f"ce_zero_{len(tokens)}", lambda: {"ce_zero": self._ce_zero(tokens, batches)})
        summary = self._clean_summary(tokens, batches)
        clean, spliced, kl = [], [], []
        for i, (tb, start) in enumerate(tqdm(batches, desc="ce_loss_recovered", unit="batch", leave=False)):
            if summary is None:  # the clean forward again, and KL from both full distributions
                lc, ls = lm.logits(tb, start=start), lm.logits(tb, replace=reconstruct, start=start)
                lp_clean, lp_sae = torch.log_softmax(lc[:, 1:-1], -1), torch.log_softmax(ls[:, 1:-1], -1)
                clean += next_token_ce(lc, tb, lp_clean).mean(-1).tolist()
                spliced += next_token_ce(ls, tb, lp_sae).mean(-1).tolist()
                kl += (lp_clean.exp() * (lp_clean - lp_sae)).sum(-1).mean(-1).tolist()
                continue
            ls, hs = lm.logits_and_final(tb, replace=reconstruct, start=start)
            # one context's log-softmax at a time: T × V floats beside the logits, not another B × T × V
            ce = torch.cat([next_token_ce(lc[None], row[None]) for lc, row in zip(ls, tb)])  # [B, T−2]
            # log Z_sae = l_target − log p_target: the normaliser without another pass over the vocabulary
            log_z = ls[:, 1:-1].gather(-1, tb[:, 2:, None].to(ls.device)).squeeze(-1) + ce
            rows = slice(i * self.cfg.batch_contexts, i * self.cfg.batch_contexts + len(tb))
            expected_logit = (summary["p_clean_W"][rows].double() * hs[:, 1:-1].double().cpu()).sum(-1)
            kl += (log_z.double().cpu() - expected_logit - summary["offset"][rows]).mean(-1).tolist()
            spliced += ce.mean(-1).tolist()
        if summary is not None:
            clean = summary["ce_clean"].tolist()
        c, s, z, k = (np.asarray(v, np.float64) for v in (clean, spliced, zero["ce_zero"], kl))
        return {"ce_clean": c.mean(), "ce_sae": s.mean(), "ce_zero": z.mean(), "ce_delta": s.mean() - c.mean(),
                "ce_loss_recovered": (z - s).sum() / (z - c).sum(), "kl_div": k.mean(),
                "ce_loss_recovered_se": ratio_se(z - s, z - c), "ce_delta_se": mean_se(s - c),
                "kl_div_se": mean_se(k)}

    def _ce_zero(self, tokens, batches) -> list[float]:
        """Per-context CE with the hook activation zeroed (BOS kept)."""
        lm = self.source.lm
        first = batches[0][1]
        if first is not None and lm.site in RESID_SITES and len(tokens) >= 2:
            pair = lm.logits(tokens[:2], replace=torch.zeros_like, start=first[:2])
            if torch.allclose(pair[0], pair[1], rtol=1e-5, atol=1e-5):  # nothing downstream sees the tokens
                lp = torch.log_softmax(pair[0, 1:-1], -1)  # [T−2, V], the same for every context
                return (-lp.gather(-1, tokens[:, 2:].T.to(lp.device)).T).mean(-1).tolist()
        return [v for tb, start in tqdm(batches, desc="ce_zero (once per split)", unit="batch", leave=False)
                for v in next_token_ce(lm.logits(tb, replace=torch.zeros_like, start=start), tb).mean(-1).tolist()]

    def _clean_summary(self, tokens, batches) -> dict | None:
        """What the SAE-spliced evaluation needs of the clean model (:mod:`saefw.lm.clean_summary`), so that each
        evaluation runs the model once (spliced) and never the clean unembedding. The held-out harvest computes it
        for the whole split (an evaluation of its first contexts takes their rows); otherwise the first
        evaluation of a split and number of contexts runs the clean forwards for it, and caches it beside the
        held-out store. None (each evaluation reruns the clean forward) when this would take more than
        ``clean_cache_mb`` or when the model's logits are not its float32 unembedding's output."""
        lm = self.source.lm
        weights = summary_weights(lm, tokens.numel(), self.cfg.clean_cache_mb)
        if weights is None:
            return None
        n, whole = len(tokens), len(self.source.eval_tokens)
        split = self.source.cached(f"clean_summary_{whole}_{lm.precision_tag}", tensors=True) if n < whole else None
        if split is not None:
            return first_contexts(split, n) if bool(split["exact"]) else None

        def compute():
            rows = CleanSummary(lm, n, tokens.shape[1], weights)
            for tb, start in tqdm(batches, desc="clean forward (once per split)", unit="batch", leave=False):
                rows.add(tb, *lm.logits_and_final(tb, start=start))
            return rows.result()

        cache = self.source.cached(f"clean_summary_{n}_{lm.precision_tag}", compute, tensors=True)
        return cache if bool(cache["exact"]) else None
