"""The Matryoshka TopK SAE (``arch=matryoshka``).

A Matryoshka SAE (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka Sparse Autoencoders";
Nabeshima 2024) trains nested dictionaries inside one SAE: every prefix of the latents — the first m_1, the
first m_2, ... — must reconstruct the input on its own. The early latents learn the general, frequent features
and the later ones refine them, so a feature is not split up or absorbed just because the dictionary grew: the
``absorption`` evaluator measures exactly that.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saefw.arch.base import SparsityInput, TrainOutput, auxk_loss
from saefw.arch.topk import TopKConfig, TopKSAE
from saefw.errors import SaefwError
from saefw.registry import register


@dataclass
class MatryoshkaConfig(TopKConfig):
    group_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0], metadata={"help": (
        "the nested dictionary sizes as fractions of d_sae, increasing; the last is the whole dictionary (1.0)")})


@register("arch", "matryoshka", MatryoshkaConfig)
class MatryoshkaSAE(TopKSAE):
    """z = (x − b_dec) W_enc + b_enc;   f = ReLU(TopK_k(z))   (exactly as topk);
    prefixes m_1 < … < m_G = d_sae  (m_g = round(group_fractions[g] · d_sae));
    x̂_g = Σ_{i < m_g} f_i W_dec,i + b_dec   (the reconstruction from the first m_g latents alone);
    loss = (1/G) Σ_g ‖x − x̂_g‖² + α·AuxK(z, x − x̂_G)   (logged: mse_loss is the mean over prefixes).

    Averaging over the G prefixes keeps the loss on the scale of one reconstruction, so α = 1/32 means what it
    means for topk. Only training differs from topk: inference is f = ReLU(TopK_k(z)), x̂ = x̂_G, so saved
    directories load in SAELens as its ``topk`` architecture."""

    saelens_architecture = "topk"  # exported with topk's hooks (inherited); SAELens topk dirs stay topk's to read

    def __init__(self, cfg: MatryoshkaConfig, d_in: int, d_sae: int):
        super().__init__(cfg, d_in, d_sae)
        fr = list(cfg.group_fractions)
        if not fr or any(not a < b for a, b in zip([0.0] + fr, fr)) or fr[-1] != 1.0:
            raise SaefwError(f"arch.group_fractions={fr!r} is invalid: increasing fractions in (0, 1] ending at 1.0")
        self.prefixes = sorted({max(1, round(f * d_sae)) for f in fr})

    def prefix_reconstructions(self, f: torch.Tensor) -> list[torch.Tensor]:
        """[x̂_1, …, x̂_G]: each prefix's reconstruction, built block by block (one decode's cost in all)."""
        out, acc, start = [], self.b_dec, 0
        for end in self.prefixes:
            acc = acc + f[:, start:end] @ self.W_dec[start:end]
            out.append(acc)
            start = end
        return out

    def train_forward(self, x, dead_mask=None) -> TrainOutput:
        z = self.pre_acts(x)
        f = self.train_acts(z)
        recons = self.prefix_reconstructions(f)
        mses = torch.stack([(r - x).pow(2).sum(-1).mean() for r in recons])
        aux = self.cfg.aux_coefficient * auxk_loss(z, x, recons[-1], self.W_dec, dead_mask, self.k_aux)
        return TrainOutput(f, mses.mean(), SparsityInput(acts=f, W_dec=self.W_dec), {"aux_loss": aux},
                           logs={"full_mse": mses[-1].detach(), "first_prefix_mse": mses[0].detach()})
