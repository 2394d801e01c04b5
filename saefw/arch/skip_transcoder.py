"""Skip-transcoder (Paulo, Shabalin & Belrose 2025, "Transcoders beat sparse autoencoders for interpretability"): a
transcoder plus a dense linear path from the input site to the output site, which carries the MLP's linear part
so that the latents are left with the nonlinear rest."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saefw.arch.transcoder import TranscoderConfig, TranscoderSAE
from saefw.registry import register


@dataclass
class SkipTranscoderConfig(TranscoderConfig):
    """The transcoder's options; the skip path has none (W_skip starts at zero, as Paulo et al.)."""


@register("arch", "skip_transcoder", SkipTranscoderConfig)
class SkipTranscoderSAE(TranscoderSAE):
    """The transcoder's equations (:class:`~saefw.arch.transcoder.TranscoderSAE`) with the output

        ŷ = f W_dec + x W_skipᵀ + b_dec,     W_skip [d_out, d_in], zero at init,

    trained jointly (the penalty sees f only; the skip path is free). ``decode(f)`` alone is the dictionary's
    part, ``decode(f, x_in)`` and ``forward`` the whole output. Saved: activation=jumprelu as SAELens's
    ``jumprelu_skip_transcoder`` (tensors plus ``W_skip``, whose ``forward`` adds x W_skipᵀ as here);
    activation=topk as saefw's own ``topk_skip_transcoder``."""

    saelens_architecture = property(lambda self: "jumprelu_skip_transcoder" if self.activation == "jumprelu" else None)
    saved_architecture = property(lambda self: f"{self.activation}_skip_transcoder")
    saelens_reads = ("jumprelu_skip_transcoder",)

    def __init__(self, cfg: SkipTranscoderConfig, d_in: int, d_sae: int, d_out: int):
        super().__init__(cfg, d_in, d_sae, d_out)
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in))

    def _decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        out = f @ self.W_dec + self.b_dec
        return out if x is None else out + x @ self.W_skip.t()

    @classmethod
    def saelens_tensor_names(cls, architecture: str) -> set[str]:
        return super().saelens_tensor_names(architecture) | {"W_skip"}
