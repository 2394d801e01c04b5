"""The evaluator interface and the loop that runs every evaluator over the held-out split in one pass."""
from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig
from torch import Tensor

from saefw.app.allocator import large_blocks_returned
from saefw.registry import build

log = logging.getLogger("saefw")


class Evaluator:
    """Streaming evaluator: ``begin`` → ``update`` per held-out batch → ``compute``.

    ``update`` receives raw activations ``x`` [B, d_out] (what the SAE reconstructs: for a transcoder the target
    site, not what it reads), latents ``f`` [B, d_sae] and reconstructions ``x_hat``.
    ``compute`` returns named numbers; a 1-D tensor value is a histogram (logged as one, not as a scalar).
    Evaluators that need more than activations (a language model, ground truth) say so in ``requires`` and
    are skipped, with a warning naming them, on a source that cannot provide it."""

    plugin_name = "?"
    requires: tuple[str, ...] = ()  # attributes of the source that must not be None, e.g. ("lm",)

    def __init__(self, cfg):
        self.cfg = cfg

    final = True  # False for the periodic evaluations during training, where an evaluator may do less

    def begin(self, sae, source) -> None:
        self.sae, self.source = sae, source

    def update(self, x: Tensor, f: Tensor, x_hat: Tensor) -> None:
        pass

    def compute(self) -> dict[str, float | Tensor]:
        raise NotImplementedError


def usable(evaluator: Evaluator, source) -> bool:
    return all(getattr(source, attr, None) is not None for attr in evaluator.requires)


def build_evaluators(cfg: DictConfig, source, named: bool = False) -> list:
    """The evaluators of ``cfg.evaluators`` that ``source`` can serve. One it cannot serve (``ground_truth``
    without known features, ``loss_recovered`` without a language model) is skipped: quietly when it came
    from the default list, with a warning when the user ``named`` the list (``evaluators=[...]``)."""
    evaluators = []
    for name, ev_cfg in (cfg.evaluators or {}).items():
        ev = build("evaluator", ev_cfg or {}, name=name)
        if usable(ev, source):
            evaluators.append(ev)
        else:
            (log.warning if named else log.debug)("evaluator %s skipped: source=%s provides no %s", name,
                                                  cfg.source.name, "/".join(ev.requires))
    return evaluators


@torch.no_grad()
def run_evaluators(sae, source, evaluators: list[Evaluator], batch_size: int = 4096,
                   final: bool = True) -> dict[str, float | Tensor]:
    """One pass over ``source.eval_batches`` feeding every evaluator; returns their merged results.
    ``final=False`` marks a periodic evaluation during training."""
    was_training = sae.training
    sae.eval()
    # its logits and latents are temporaries between small results that outlive them: kept in the heap, they
    # fragmented it by up to 1.1 GB, and they must not stay on top of training's heap (saefw.app.allocator)
    try:
        with large_blocks_returned():
            for ev in evaluators:
                ev.final = final
                ev.begin(sae, source)
            device = next(sae.parameters()).device
            for rows in source.eval_batches(batch_size):
                x_in, x = sae.split_rows(rows.to(device, torch.float32))
                x_hat, f = sae(x_in)  # forward, not decode(f): a skip-transcoder's output also reads x_in
                for ev in evaluators:
                    ev.update(x, f, x_hat)
            out: dict[str, float | Tensor] = {}
            for ev in evaluators:
                out.update(ev.compute())
            return out
    finally:
        sae.train(was_training)
