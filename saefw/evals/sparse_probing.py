"""k-sparse probing (Gurnee et al. 2023; SAEBench's sparse_probing): can k SAE latents classify a property of a
text as well as the model's whole activation?

Per text t with non-BOS tokens 1..n_t and hook activations x_{t,i}, the SAE's pooled latents are
F_t = (1/n_t) Σ_i f(x_{t,i}) (pooled after encoding, so F ≠ f(mean x)) and the model's are X_t = (1/n_t) Σ_i x_{t,i}.
Latents are ranked on the training texts by the spread of their class means,
s_j = max_c mean_{t∈c} F_{t,j} − min_c mean_{t∈c} F_{t,j} (ties: lower index first), and for each k a multinomial
logistic regression on the standardised top-k latents is fit on the training texts; the metric is its held-out
accuracy a with the binomial standard error sqrt(a(1 − a)/n_test); the means over tasks get
sqrt(Σ se²)/n_tasks. The same classifier on X gives the ceiling
(``*_llm_acc``). Tasks: the packaged Factbook's section (9 classes) and region (13 classes) of each document, or a
labelled local file / Hugging Face dataset (``text_field``, ``label_field``).

Differs from SAEBench, which scores binary one-vs-rest tasks on its own hub datasets with mean pooling over the
sequence: ours are multiclass tasks on text shipped with the package (offline), classes balanced by
``max_per_class``; the selection rule (class-mean difference) and the logistic probe are the same idea."""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from saefw.errors import SaefwError
from saefw.evals.base import Evaluator
from saefw.lm.corpus import HF_PREFIX, Corpus
from saefw.registry import register

log = logging.getLogger("saefw")

# built-in tasks: label of a Factbook document from its `source` field, e.g. "africa/ag.json:/Economy/overview/text"
BUILTIN_TASKS = {"factbook_section": lambda source: source.split(":/", 1)[1].split("/")[0],
                 "factbook_region": lambda source: source.split("/")[0]}


@dataclass
class SparseProbingConfig:
    tasks: list[str] = field(default_factory=lambda: list(BUILTIN_TASKS), metadata={"help": (
        "built-in tasks (factbook_section, factbook_region), labelled .jsonl/.parquet files or hf:<dataset>")})
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20],
                          metadata={"help": "numbers of latents to probe with"})
    max_per_class: int = field(default=100, metadata={"help": "at most this many texts per class"})
    min_per_class: int = field(default=10, metadata={"help": "classes with fewer texts are dropped"})
    context_size: int = field(default=128, metadata={"help": "tokens per text (after BOS), the rest cut off"})
    test_fraction: float = field(default=0.3, metadata={"help": "share of each class held out for accuracy"})
    seed: int = field(default=0, metadata={"help": "text sampling and split seed"})
    batch_size: int = field(default=16, metadata={"help": "texts per model forward"})
    text_field: str = field(default="text", metadata={"help": "text field of a file or dataset task"})
    label_field: str = field(default="label", metadata={"help": "label field of a file or dataset task"})


def task_name(task: str) -> str:
    """The metric-name part of a task: a built-in name, a file's stem, or the dataset name, as [A-Za-z0-9_]."""
    if task in BUILTIN_TASKS:
        return task
    name = task[len(HF_PREFIX):] if task.startswith(HF_PREFIX) else Path(task).name.split(".")[0]
    return re.sub(r"\W+", "_", name).strip("_") or "task"


def load_task(task: str, cfg: SparseProbingConfig) -> tuple[list[str], list[str]]:
    """(texts, labels) of every document of ``task``."""
    if task in BUILTIN_TASKS:
        rows = list(Corpus("factbook").rows(("source",)))
        return [t for t, _ in rows], [BUILTIN_TASKS[task](source) for _, source in rows]
    if not task.startswith(HF_PREFIX) and not Path(task).expanduser().exists():
        raise SaefwError(f"evaluators.sparse_probing.tasks: {task!r} is neither a built-in task "
                         f"({', '.join(BUILTIN_TASKS)}), a labelled .jsonl/.parquet file, nor {HF_PREFIX}<dataset>")
    rows = list(Corpus(task, text_field=cfg.text_field).rows((cfg.label_field,)))
    return [t for t, _ in rows], [str(label) for _, label in rows]


def sample_split(labels: list[str], cfg: SparseProbingConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Seeded, stratified: (chosen text indices, their class ids, train mask, class names). Each kept class gives
    at most ``max_per_class`` texts, ``test_fraction`` of them (at least one) held out."""
    labels = np.asarray(labels, dtype=object)
    classes = sorted(c for c in set(labels) if (labels == c).sum() >= cfg.min_per_class)
    if len(classes) < 2:
        raise SaefwError(f"sparse_probing: {len(classes)} class(es) with >= min_per_class={cfg.min_per_class} texts "
                         f"(of {len(set(labels))}); a task needs at least 2")
    rng = np.random.default_rng(cfg.seed)
    idx, y, train = [], [], []
    for c, name in enumerate(classes):
        chosen = np.sort(rng.permutation(np.flatnonzero(labels == name))[:cfg.max_per_class])
        n_test = min(max(1, round(cfg.test_fraction * len(chosen))), len(chosen) - 1)
        held = set(rng.permutation(len(chosen))[:n_test].tolist())
        idx += chosen.tolist()
        y += [c] * len(chosen)
        train += [i not in held for i in range(len(chosen))]
    return np.asarray(idx), np.asarray(y), np.asarray(train), classes


def pool(values: torch.Tensor, offsets: torch.Tensor, encode=None, chunk: int = 4096) -> torch.Tensor:
    """Mean over each text's rows: values [T, d], offsets [n + 1] (text t is rows offsets[t]:offsets[t+1]) → [n, m];
    with ``encode``, the mean of ``encode(rows)`` [·, m], computed ``chunk`` rows at a time so the [T, m] latents
    of every token are never held at once."""
    lengths = offsets[1:] - offsets[:-1]
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    out = None
    for start in range(0, len(values), chunk):
        v = values[start:start + chunk].float()
        v = v if encode is None else encode(v)
        out = torch.zeros(len(lengths), v.shape[1]) if out is None else out
        out.index_add_(0, owner[start:start + chunk], v.float().cpu())
    return out / lengths.clamp(min=1).unsqueeze(1)


def select_latents(F: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The k latents with the largest spread of class means, s_j = max_c mean_c F_j − min_c mean_c F_j."""
    means = np.stack([F[y == c].mean(0) for c in np.unique(y)])
    return np.argsort(-(means.max(0) - means.min(0)), kind="stable")[:k]


def probe_accuracy(X_train, y_train, X_test, y_test) -> float:
    """Held-out accuracy of a logistic regression on standardised features."""
    # imported here: the registry imports every evaluator at start-up, and sklearn costs about a second
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float((clf.fit(X_train, y_train).predict(X_test) == y_test).mean())


def binomial_se(acc: float, n: int) -> float:
    return float(np.sqrt(acc * (1 - acc) / n))


def mean_of_se(ses: list[float]) -> float:
    """SE of the mean of independent estimates: sqrt(Σ se_i²) / n (the tasks' held-out texts are disjoint)."""
    return float(np.sqrt(np.sum(np.square(ses))) / len(ses))


def sae_accuracies(F: np.ndarray, y: np.ndarray, train: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Held-out accuracy of the top-k probe for each k (k capped at the number of latents)."""
    out = {}
    for k in ks:
        cols = select_latents(F[train], y[train], min(k, F.shape[1]))
        out[k] = probe_accuracy(F[train][:, cols], y[train], F[~train][:, cols], y[~train])
    return out


@register("evaluator", "sparse_probing", SparseProbingConfig)
class SparseProbingEvaluator(Evaluator):
    """k-sparse probing on labelled text; equations in the module docstring. Final evaluation only."""

    requires = ("lm",)

    def __init__(self, cfg):
        super().__init__(cfg)
        if not 0 < cfg.test_fraction < 1:
            raise SaefwError(f"evaluators.sparse_probing.test_fraction={cfg.test_fraction} must be between 0 and 1")
        if cfg.min_per_class < 2 or cfg.max_per_class < cfg.min_per_class:
            raise SaefwError(f"evaluators.sparse_probing: need 2 <= min_per_class ({cfg.min_per_class}) <= "
                             f"max_per_class ({cfg.max_per_class})")
        if not cfg.ks or min(cfg.ks) < 1:
            raise SaefwError(f"evaluators.sparse_probing.ks={list(cfg.ks)} must be positive integers")
        if not cfg.tasks:
            raise SaefwError(f"evaluators.sparse_probing.tasks is empty; built-in: {', '.join(BUILTIN_TASKS)}")

    def _cache_key(self, task: str) -> str:
        c = self.cfg
        digest = hashlib.sha256(f"{task}|{c.text_field}|{c.label_field}".encode()).hexdigest()[:8]
        return (f"sparse_probing_{task_name(task)}_{digest}_{c.max_per_class}_{c.min_per_class}_{c.context_size}_"
                f"{c.test_fraction}_{c.seed}")

    def _task_data(self, task: str) -> dict:
        """The SAE-independent part: per-token activations of the sampled texts and the full-activation probe."""
        lm, c = self.source.lm, self.cfg
        texts, labels = load_task(task, c)
        idx, y, train, classes = sample_split(labels, c)
        ids = [lm.tokenizer(texts[i], add_special_tokens=False).input_ids[:c.context_size] or [lm.sep_id]
               for i in idx]
        acts = []
        for start in range(0, len(ids), c.batch_size):
            batch = ids[start:start + c.batch_size]
            width = max(map(len, batch))
            # right padding: causal attention keeps the padding out of the real tokens' activations
            tokens = torch.tensor([[lm.bos_id, *t, *[lm.sep_id] * (width - len(t))] for t in batch])
            out = lm.activations(tokens.to(lm.device))[:, 1:].float().cpu()
            acts += [out[r, :len(t)] for r, t in enumerate(batch)]
        offsets = torch.tensor([0, *np.cumsum([len(t) for t in ids])])
        acts = torch.cat(acts)
        X = pool(acts, offsets).numpy()
        llm_acc = probe_accuracy(X[train], y[train], X[~train], y[~train])
        log.info("sparse_probing %s: %d classes, %d train / %d held-out texts, full-activation probe %.3f",
                 task_name(task), len(classes), train.sum(), (~train).sum(), llm_acc)
        return {"acts": acts.half(), "offsets": offsets, "labels": torch.as_tensor(y), "train": torch.as_tensor(train),
                "llm_acc": torch.tensor([llm_acc])}

    @torch.no_grad()
    def _pooled_latents(self, acts: torch.Tensor, offsets: torch.Tensor) -> np.ndarray:
        dev = next(self.sae.parameters()).device
        return pool(acts, offsets, encode=lambda x: self.sae.encode(x.to(dev))).numpy()

    def compute(self):
        if not self.final:
            return {}
        out, llm, by_k = {}, [], {k: [] for k in dict.fromkeys(self.cfg.ks)}
        for task in self.cfg.tasks:
            d = self.source.cached(self._cache_key(task), lambda task=task: self._task_data(task), tensors=True)
            y, train = d["labels"].numpy(), d["train"].numpy().astype(bool)
            n_test = int((~train).sum())
            name = f"sparse_probing_{task_name(task)}"
            acc = float(d["llm_acc"][0])
            out[f"{name}_llm_acc"], out[f"{name}_llm_acc_se"] = acc, binomial_se(acc, n_test)
            llm.append(acc)
            F = self._pooled_latents(d["acts"], d["offsets"])
            for k, acc in sae_accuracies(F, y, train, list(by_k)).items():
                out[f"{name}_sae_top_{k}_acc"], out[f"{name}_sae_top_{k}_acc_se"] = acc, binomial_se(acc, n_test)
                by_k[k].append(acc)
        for key, accs in (("llm", llm), *((f"sae_top_{k}", v) for k, v in by_k.items())):
            out[f"sparse_probing_{key}_acc"] = float(np.mean(accs))
            out[f"sparse_probing_{key}_acc_se"] = mean_of_se([out[f"sparse_probing_{task_name(t)}_{key}_acc_se"]
                                                              for t in self.cfg.tasks])
        return out
