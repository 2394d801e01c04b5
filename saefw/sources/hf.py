"""Live activations from a ``transformers`` causal LM over a text corpus."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saefw.corpus import Corpus, split_documents
from saefw.registry import register
from saefw.sources.base import ActivationSource, RunSpec
from saefw.lm import LanguageModel

log = logging.getLogger(__name__)


@dataclass
class HFSourceConfig:
    corpus: str = "factbook"  # an embedded corpus name, or a .txt / .jsonl(.gz) file
    context_size: int = 128
    forward_batch_size: int = 16  # contexts per model forward
    buffer_tokens: int = 65536  # shuffle buffer: batches mix tokens from many contexts
    eval_contexts: int = 32  # held-out contexts (from documents never used for training)
    eval_doc_fraction: float = 0.05
    device: str = "auto"  # auto → cuda when available
    dtype: str = "float32"
    local_files_only: bool = True  # no network at run time; a hub cache or local dir still works


@register("source", "hf", HFSourceConfig)
class HFActivationSource(ActivationSource):
    """Hooks ``model`` at (``layer``, ``site``), harvests activations of corpus contexts with the forward stopped
    after the hooked block, and streams them through a shuffle buffer. The document split is fixed, so the
    held-out contexts are identical across runs and seeds. BOS positions are never served."""

    needs_model = True

    def __init__(self, cfg: HFSourceConfig, spec: RunSpec):
        super().__init__(cfg, spec)
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.lm = LanguageModel(spec.model, spec.layer, spec.site, device=device,
                                dtype=getattr(torch, cfg.dtype), local_files_only=cfg.local_files_only)
        self.d_in = self.lm.d_model

    def setup(self) -> None:
        corpus = Corpus(self.cfg.corpus)
        heldout = split_documents(corpus.documents(), self.cfg.eval_doc_fraction, heldout=True)
        self.eval_tokens = self.lm.contexts(heldout, self.cfg.context_size)[: self.cfg.eval_contexts]
        self.train_tokens = self.lm.contexts(split_documents(corpus.documents(), self.cfg.eval_doc_fraction,
                                                             heldout=False), self.cfg.context_size)
        self._eval_acts: Tensor | None = None
        log.info("corpus %s: %d train contexts (%d tokens), %d held-out contexts", self.cfg.corpus,
                 len(self.train_tokens), self.train_tokens[:, 1:].numel(), len(self.eval_tokens))

    def _harvest(self, tokens: Tensor, desc: str | None = None) -> Tensor:
        """[N·(T−1), d] activations of ``tokens`` (BOS dropped), in forward batches (with a progress bar when
        ``desc`` is given: harvests outside the training loop would otherwise look like a hang)."""
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(tokens), self.cfg.forward_batch_size)
        for i in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
            x = self.lm.activations(tokens[i: i + self.cfg.forward_batch_size])
            out.append(x[:, 1:].reshape(-1, x.shape[-1]).float())
        return torch.cat(out)

    def train_batches(self, batch_size: int) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(self.spec.seed)
        per_ctx = self.cfg.context_size - 1
        served, epoch, buffer = 0, 0, None
        budget = self.spec.total_tokens
        while served < budget:
            order = torch.randperm(len(self.train_tokens), generator=g)
            if epoch == 1:
                log.warning("total_tokens=%d exceeds the corpus (%d train tokens): reusing text (epoch 2+)",
                            budget, len(self.train_tokens) * per_ctx)
            step = max(1, self.cfg.buffer_tokens // (2 * per_ctx))
            for i in range(0, len(order), step):
                fresh = self._harvest(self.train_tokens[order[i: i + step]],
                                      desc="harvesting first buffer" if buffer is None else None)
                buffer = fresh if buffer is None else torch.cat([buffer, fresh])
                if len(buffer) < self.cfg.buffer_tokens and i + step < len(order):
                    continue
                buffer = buffer[torch.randperm(len(buffer), generator=g).to(buffer.device)]
                half = len(buffer) // 2  # serve half, keep half to mix with the next harvest
                for j in range(0, half - batch_size + 1, batch_size):
                    yield buffer[j: j + batch_size]
                    served += batch_size
                    if served >= budget:
                        return
                buffer = buffer[(half // batch_size) * batch_size:]
            epoch += 1

    def eval_batches(self, batch_size: int) -> Iterator[Tensor]:
        if self._eval_acts is None:
            self._eval_acts = self._harvest(self.eval_tokens, desc="harvesting held-out split")
        yield from self._eval_acts.split(batch_size)

    def describe(self) -> dict:
        return {"model_name": self.spec.model, "hook_name": self.lm.hook_name, "hook_layer": self.spec.layer,
                "site": self.spec.site, "context_size": self.cfg.context_size, "dataset_path": self.cfg.corpus,
                "prepend_bos": True}
