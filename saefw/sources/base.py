"""The activation-source interface: batches of activations [B, d_in], a train stream and a held-out split."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor


@dataclass
class RunSpec:
    """Top-level run keys every source receives (a source may ignore the ones it does not use)."""

    model: str
    layer: int
    site: str
    seed: int
    total_tokens: int


class ActivationSource:
    """Base class. ``setup()`` does the heavy work (load a model, harvest); the rest is cheap.

    * ``train_batches(batch_size)`` yields shuffled training batches until ``spec.total_tokens`` are served.
    * ``eval_batches(batch_size)`` yields the held-out split, the same tokens every call.
    * ``lm`` is a :class:`saefw.lm.LanguageModel` when the activations come from a language model
      (needed by ``loss_recovered``); ``ground_truth`` holds known feature directions [n, d_in] (synthetic).
    """

    plugin_name = "?"
    needs_model = False  # True when the source reads spec.model/layer/site (so they must be known)
    d_in: int
    lm = None
    ground_truth: Tensor | None = None

    def __init__(self, cfg, spec: RunSpec):
        self.cfg, self.spec = cfg, spec

    def setup(self) -> None:
        pass

    def train_batches(self, batch_size: int) -> Iterator[Tensor]:
        raise NotImplementedError

    def eval_batches(self, batch_size: int) -> Iterator[Tensor]:
        raise NotImplementedError

    def describe(self) -> dict:
        """Provenance written to the SAE's cfg.json (SAELens keys where they exist)."""
        return {"source": self.plugin_name}
