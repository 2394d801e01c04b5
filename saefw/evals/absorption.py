"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"; SAEBench's absorption).

Per letter L with unit probe direction p̂ (one-vs-rest logistic regression on the model's activations x at the
word's token), main latents M_L from k-sparse probing on SAE latents f (k grows while train F1 improves by more
than ``tau``). For each probe-correct test word of letter L, with c_j = f_j (W_dec_j · p̂), P = x · p̂:
  full absorption: every main latent has f_j = 0, the top-projecting latent j* has cos(W_dec_j*, p̂) ≥ cos_full
  and c_j* ≥ proj_threshold · P.
  absorption fraction: A = sum of the top ``max_absorbers`` positive c_j over non-main j with cos ≥ cos_frac,
  m = Σ_{j∈M} c_j; 0 if m ≥ P or A < proj_threshold · P; 1 if m ≤ 0; else min(A, P − m) / (min(A, P − m) + m).
absorption_rate = mean over letters of the fully absorbed share; absorption_fraction = mean over letters of the
mean fraction; ``*_se``: standard error across letters."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from saefw.errors import SaefwError
from saefw.evals.base import Evaluator
from saefw.evals.stats import mean_se
from saefw.registry import register

log = logging.getLogger("saefw")


@dataclass
class AbsorptionConfig:
    max_words: int = field(default=2000, metadata={"help": "at most this many single-token words"})
    min_words_per_letter: int = field(default=10, metadata={"help": "letters with fewer words are dropped"})
    test_fraction: float = field(default=0.3, metadata={"help": "share of words held out for scoring"})
    seed: int = field(default=0, metadata={"help": "word sampling and split seed"})
    batch_size: int = field(default=64, metadata={"help": "prompts per model forward"})
    tau: float = field(default=0.03, metadata={"help": "k-sparse probing: min F1 gain to add a latent"})
    max_k: int = field(default=10, metadata={"help": "k-sparse probing: at most this many main latents"})
    cos_full: float = field(default=0.025, metadata={"help": "full absorption: min cosine of the absorber"})
    cos_frac: float = field(default=0.1, metadata={"help": "absorption fraction: min cosine of absorbers"})
    proj_threshold: float = field(default=0.4, metadata={"help": "min share of the probe projection absorbed"})
    max_absorbers: int = field(default=3, metadata={"help": "absorption fraction: at most this many absorbers"})


def fit_probes(acts: np.ndarray, labels: np.ndarray, train: np.ndarray):
    """One-vs-rest logistic probes: W [L, d], b [L]."""
    # imported here: the registry imports every evaluator at start-up, and sklearn costs about a second
    from sklearn.linear_model import LogisticRegression
    W, b = [], []
    for k in range(int(labels.max()) + 1):
        lr = LogisticRegression(max_iter=1000, class_weight="balanced").fit(acts[train], labels[train] == k)
        W.append(lr.coef_[0]), b.append(lr.intercept_[0])
    return np.asarray(W, np.float32), np.asarray(b, np.float32)


def _f1(pred, y):
    tp = (pred & y).sum()
    return 0.0 if tp == 0 else 2 * tp / (pred.sum() + y.sum())


def main_latents(f: np.ndarray, y: np.ndarray, tau: float, max_k: int) -> list[int]:
    """k-sparse probing on train words: latents ranked by class-mean difference, k grows while F1 gains > tau."""
    from sklearn.linear_model import LogisticRegression
    order = np.argsort(-(f[y].mean(0) - f[~y].mean(0)), kind="stable")
    best, chosen = -1.0, []
    for k in range(1, max_k + 1):
        X = f[:, order[:k]]
        if X.std() == 0:
            score = 0.0
        else:
            score = _f1(LogisticRegression(max_iter=1000, class_weight="balanced").fit(X, y).predict(X), y)
        if score - best <= tau and k > 1:
            break
        best, chosen = score, order[:k].tolist()
    return chosen


def word_scores(x: np.ndarray, f: np.ndarray, W_dec: np.ndarray, p: np.ndarray, main: list[int], cfg):
    """(fully absorbed, absorption fraction) for one word: x [d], f [d_sae], W_dec [d_sae, d], p unit [d]."""
    proj_dec = W_dec @ p
    cos = proj_dec / np.maximum(np.linalg.norm(W_dec, axis=1), 1e-12)
    c = f * proj_dec
    P = float(x @ p)
    m = float(c[main].sum())
    others = np.ones(len(c), bool)
    others[main] = False
    cand = np.sort(c[others & (cos >= cfg.cos_frac) & (c > 0)])[::-1][:cfg.max_absorbers]
    A = float(cand.sum())
    if m >= P or A < cfg.proj_threshold * P:
        frac = 0.0
    elif m <= 0:
        frac = 1.0
    else:
        a = min(A, P - m)
        frac = float(np.clip(a / (a + m), 0, 1))
    j = int(np.argmax(c))
    full = bool((f[main] <= 1e-8).all() and cos[j] >= cfg.cos_full and P > 0 and c[j] >= cfg.proj_threshold * P)
    return full, frac


def absorption_scores(acts, labels, train, probe_W, probe_b, encode, W_dec, cfg) -> dict:
    """The SAE part: per-letter rates and fractions, then the means across letters."""
    acts = np.asarray(acts, np.float32)
    labels, train = np.asarray(labels), np.asarray(train, bool)
    f = np.asarray(encode(acts), np.float32)
    W_dec = np.asarray(W_dec, np.float32)
    rates, fracs, splits = [], [], []
    for k in range(len(probe_W)):
        main = main_latents(f[train], labels[train] == k, cfg.tau, cfg.max_k)
        p = probe_W[k] / np.linalg.norm(probe_W[k])
        test = np.where(~train & (labels == k) & (acts @ probe_W[k] + probe_b[k] > 0))[0]
        if len(test) == 0:
            continue
        s = [word_scores(acts[i], f[i], W_dec, p, main, cfg) for i in test]
        rates.append(np.mean([a for a, _ in s])), fracs.append(np.mean([b for _, b in s]))
        splits.append(len(main))
    if not rates:
        raise SaefwError("absorption: no letter has a held-out word its probe classifies correctly; raise "
                         "evaluators.absorption.max_words or lower min_words_per_letter")
    return {"absorption_rate": float(np.mean(rates)), "absorption_rate_se": mean_se(rates),
            "absorption_fraction": float(np.mean(fracs)), "absorption_fraction_se": mean_se(fracs),
            "absorption_split_features": float(np.mean(splits)), "absorption_letters": len(rates),
            "per_letter_rate": rates}


def vocab_words(tokenizer) -> list[tuple[str, int]]:
    """Single-token alphabetic ASCII words (leading-space marker stripped), by token id."""
    out, seen = [], set()
    for tok, i in sorted(tokenizer.get_vocab().items(), key=lambda t: t[1]):
        w = tokenizer.convert_tokens_to_string([tok]).strip()
        if len(w) >= 2 and w.isascii() and w.isalpha() and w not in seen:
            seen.add(w)
            out.append((w, i))
    if not out:
        raise SaefwError("absorption: the tokenizer has no single-token alphabetic words")
    return out


@register("evaluator", "absorption", AbsorptionConfig)
class AbsorptionEvaluator(Evaluator):
    """First-letter feature absorption; equations in the module docstring. Final evaluation only."""

    requires = ("lm",)

    def __init__(self, cfg):
        super().__init__(cfg)
        if not 0 < cfg.test_fraction < 1:
            raise SaefwError(f"evaluators.absorption.test_fraction={cfg.test_fraction} must be between 0 and 1")
        if cfg.max_words < 10:
            raise SaefwError(f"evaluators.absorption.max_words={cfg.max_words} must be at least 10")

    def _data(self):
        lm, c = self.source.lm, self.cfg
        words = vocab_words(lm.tokenizer)
        rng = np.random.default_rng(c.seed)
        words = [words[i] for i in sorted(rng.permutation(len(words))[:c.max_words])]
        icl, words = words[:4], words[4:]
        prefix = "".join(f" {w} has the first letter: {w[0].upper()}\n" for w, _ in icl)
        pre = lm.tokenizer(prefix, add_special_tokens=False).input_ids
        letters = np.array([ord(w[0].upper()) for w, _ in words])
        keep = [L for L in sorted(set(letters)) if (letters == L).sum() >= c.min_words_per_letter]
        if len(keep) < 2:
            raise SaefwError(f"absorption: only {len(keep)} letters with >= min_words_per_letter="
                             f"{c.min_words_per_letter} words")
        sel = np.isin(letters, keep)
        ids = np.array([i for w, i in words])[sel]
        labels = np.searchsorted(keep, letters[sel])
        tokens = torch.tensor([[lm.bos_id, *pre, i] for i in ids])
        acts = torch.cat([lm.activations(t.to(lm.device))[:, -1].float().cpu()
                          for t in tokens.split(c.batch_size)])
        train = rng.random(len(ids)) >= c.test_fraction
        W, b = fit_probes(acts.numpy(), labels, train)
        return {"acts": acts, "labels": torch.tensor(labels), "train": torch.tensor(train),
                "probe_W": torch.tensor(W), "probe_b": torch.tensor(b), "letters": torch.tensor(keep)}

    def compute(self):
        if not self.final:
            return {}
        c = self.cfg
        d = self.source.cached(f"absorption_{c.max_words}_{c.min_words_per_letter}_{c.test_fraction}_{c.seed}",
                               self._data, tensors=True)
        sae = self.sae
        dev = next(sae.parameters()).device

        def encode(x):
            with torch.no_grad():
                return sae.encode(torch.as_tensor(x).to(dev)).cpu().numpy()

        out = absorption_scores(d["acts"].numpy(), d["labels"].numpy(), d["train"].numpy(), d["probe_W"].numpy(),
                                d["probe_b"].numpy(), encode, sae.W_dec.detach().cpu().numpy(), c)
        log.info("absorption letters: %s", "".join(chr(int(v)) for v in d["letters"]))
        out.pop("per_letter_rate")
        return out
