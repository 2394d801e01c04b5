"""Test helpers shared by several test modules (fixtures stay in conftest.py)."""
from __future__ import annotations

from pathlib import Path

import torch

TINY_RUN = ["layer=1", "total_tokens=2048", "train.batch_size=256", "source.context_size=32",
            "source.eval_contexts=4", "expansion_factor=4", "wandb.mode=disabled",
            "trainer.enable_progress_bar=false"]
"""Overrides for a few-second training run on the tiny Llama of conftest (d_model 32, 4 layers)."""


def tiny_activations(model: Path, layer: int = 1, site: str = "resid_post", n_ctx: int = 4, seed: int = 0):
    """Real activations [n_ctx·31, 32] of the tiny model at (layer, site) on random token contexts."""
    from saefw.lm import LanguageModel

    lm = LanguageModel(str(model), layer, site)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, lm.model.config.vocab_size, (n_ctx, 32), generator=g)
    tokens[:, 0] = lm.bos_id
    return lm.activations(tokens)[:, 1:].reshape(-1, lm.d_model).float()


def assert_same_function(ours, theirs, x: torch.Tensor, atol: float = 1e-5) -> torch.Tensor:
    """saefw's ``ours`` and SAELens's ``theirs`` give the same latents and reconstructions on ``x`` (to
    ``atol``, relative 1e-5); returns the latents."""
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        torch.testing.assert_close(f_ours, f_theirs, atol=atol, rtol=1e-5)
        torch.testing.assert_close(ours.decode(f_ours), theirs.decode(f_theirs), atol=atol, rtol=1e-5)
    return f_ours
