"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a separate path sets how much."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saefw.arch.base import SAE, SparsityInput, TrainOutput
from saefw.arch.ops import encoder_pre_acts
from saefw.io.saelens_format import fold_b_dec_input
from saefw.registry import register


@dataclass
class GatedConfig:
    unit_norm_decoder: bool = field(default=False, metadata={"help": (
        "hold decoder rows at unit norm; forced on when the penalty ignores decoder norms (penalty=l1)")})
    init_decoder_norm: float = field(default=0.1, metadata={"help": (
        "norm of the decoder rows at init (small, as l1's); W_gate = W_dec^T")})


@register("arch", "gated", GatedConfig)
class GatedSAE(SAE):
    """π = (x − b_dec) W_enc + b_gate                      (gate pre-activations; W_enc [d_in, d_sae] is W_gate)
    W_mag = exp(r_mag) ⊙ W_enc                             (r_mag [d_sae] rescales each latent's column)
    f = 1[π > 0] ⊙ ReLU((x − b_dec) W_mag + b_mag);   x̂ = f W_dec + b_dec;
    loss = ‖x − x̂‖² + λ·P(ReLU(π)) + ‖x − x̂_frozen‖²,   x̂_frozen = ReLU(π) sg(W_dec) + sg(b_dec).

    The Heaviside gate has no gradient, so the gate path learns only from the sparsity penalty P (on ReLU(π))
    and the auxiliary reconstruction, whose decoder is a stop-gradient copy so that it trains the gate alone.
    Saved tensors (SAELens): W_enc, b_gate, r_mag, b_mag, W_dec, b_dec — no b_enc."""

    saelens_architecture = "gated"
    saelens_reads = ("gated",)

    default_penalty = "l1_decoder_norm"
    allowed_penalties = ("l1", "l1_decoder_norm", "tanh")

    def __init__(self, cfg: GatedConfig, d_in: int, d_sae: int):
        super().__init__(cfg, d_in, d_sae)
        self.unit_norm_decoder = cfg.unit_norm_decoder
        self.init_tied_weights(1.0 if cfg.unit_norm_decoder else cfg.init_decoder_norm, encoder_bias=False)
        self.b_gate = nn.Parameter(torch.zeros(d_sae))
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_mag = nn.Parameter(torch.zeros(d_sae))

    @classmethod
    def saelens_tensor_names(cls, architecture: str) -> set[str]:
        return {"W_enc", "W_dec", "b_gate", "r_mag", "b_mag", "b_dec"}

    @classmethod
    def from_saelens(cls, architecture, cfg, t, where):
        """``apply_b_dec_to_input: false`` folded into both paths: b_gate ← b_gate + b_dec W_enc and
        b_mag ← b_mag + b_dec (W_enc ⊙ exp(r_mag))."""
        if not cfg.get("apply_b_dec_to_input", True):
            t["b_mag"] += t["b_dec"] @ (t["W_enc"] * t["r_mag"].exp())
        fold_b_dec_input(cfg, t, bias="b_gate")
        return {}

    def _pre_acts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(π, magnitude pre-activations) from one shared matmul h = (x − b_dec) W_enc:  π = h + b_gate and
        (x − b_dec) W_mag + b_mag = exp(r_mag) ⊙ h + b_mag, since W_mag = exp(r_mag) ⊙ W_enc scales its columns.
        Both read W_enc·(x − b_dec), so fold_input_scale stays exact."""
        h = encoder_pre_acts(x, self.W_enc, None, self.b_dec)
        return h + self.b_gate, torch.addcmul(self.b_mag, h, torch.exp(self.r_mag))

    def _encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self._pre_acts(x)
        return (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)

    def train_forward(self, x, dead_mask=None) -> TrainOutput:
        pi_gate, pi_mag = self._pre_acts(x)
        f = (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)
        mse = (self._decode(f) - x).pow(2).sum(-1).mean()
        gate_acts = torch.relu(pi_gate)
        # The decoder is frozen in the aux term AND in the penalty's decoder norms: frozen in one place only, the
        # penalty shrinks ‖W_dec,i‖ with nothing pushing back, which lowers the effective λ until the gates fire
        # densely (SmolLM2 layer 25: L0 490 of 4,608). Rajamanoharan et al.: freeze both or neither.
        W_dec = self.W_dec.detach()
        aux = (gate_acts @ W_dec + self.b_dec.detach() - x).pow(2).sum(-1).mean()
        return TrainOutput(f, mse, SparsityInput(acts=gate_acts, W_dec=W_dec), {"aux_loss": aux})
