"""TopK SAE (Gao et al. 2024): sparsity set directly by keeping the k largest latents, no penalty needed."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saefw.arch.base import SAE, SparsityInput, TrainOutput, auxk_loss
from saefw.errors import SaefwError
from saefw.registry import register


@dataclass
class TopKConfig:
    k: int | None = None  # latents kept per token; null: the run's target L0 (see saefw/run.py sparsity_target)
    k_aux: int | None = None  # dead latents the AuxK loss may use; None -> d_in // 2 (Gao et al.)
    aux_coefficient: float = 1 / 32  # α


def resolve_k(arch: str, k, k_aux, d_in: int, d_sae: int) -> tuple[int, int]:
    """Validated (k, k_aux) for the top-k archs; k_aux defaults to d_in // 2 (Gao et al.)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_sae:
        raise SaefwError(f"arch.k={k!r} is invalid for {arch}: it must be an integer in [1, d_sae={d_sae}] "
                         f"(null: the run's target_l0)")
    if k_aux is not None and (not isinstance(k_aux, int) or k_aux < 1):
        raise SaefwError(f"arch.k_aux={k_aux!r} is invalid for {arch}: it must be a positive integer or null")
    return k, k_aux if k_aux is not None else max(1, d_in // 2)


@register("arch", "topk", TopKConfig)
class TopKSAE(SAE):
    """z = (x − b_dec) W_enc + b_enc;   f = ReLU(TopK_k(z))   (the k largest z_i per token kept, the rest 0);
    x̂ = f W_dec + b_dec;
    loss = ‖x − x̂‖² + α·AuxK(z, x − x̂)   (AuxK: the residual reconstructed from the top-k_aux dead latents).

    Decoder rows are held at unit norm; W_enc is initialised as W_decᵀ. ``k`` is saved in the config."""

    saelens_architecture = "topk"

    default_penalty = "none"
    allowed_penalties = ("none",)
    unit_norm_decoder = True

    def __init__(self, cfg: TopKConfig, d_in: int, d_sae: int):
        super().__init__(cfg, d_in, d_sae)
        self.k, self.k_aux = resolve_k(self.plugin_name, cfg.k, cfg.k_aux, d_in, d_sae)
        self.init_tied_weights(1.0)

    def topk_acts(self, z: Tensor) -> Tensor:
        # ReLU after selection, so a token whose k-th largest z is negative fires fewer than k latents
        # rather than picking up latents that would have been negative anyway.
        vals, idx = z.topk(self.k, dim=-1)
        return torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))

    def _encode(self, x: Tensor) -> Tensor:
        return self.topk_acts(self.pre_acts(x))

    def train_acts(self, z: Tensor) -> Tensor:
        """The latents used in training (BatchTopK overrides this)."""
        return self.topk_acts(z)

    def train_forward(self, x, dead_mask=None) -> TrainOutput:
        z = self.pre_acts(x)
        f = self.train_acts(z)
        x_hat = self._decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        aux = self.cfg.aux_coefficient * auxk_loss(z, x, x_hat, self.W_dec, dead_mask, self.k_aux)
        return TrainOutput(f, mse, SparsityInput(acts=f, W_dec=self.W_dec), {"aux_loss": aux})
