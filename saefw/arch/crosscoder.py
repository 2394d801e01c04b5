"""Acausal crosscoder (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing").

One dictionary reads the same hook site at L layers and writes all L of them back: a latent is one feature with
a decoder direction per layer, so a feature that persists through the residual stream is one latent, not L.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saefw.arch.base import SAE, SparsityInput, TrainOutput
from saefw.arch.ops import encoder_pre_acts
from saefw.errors import SaefwError
from saefw.registry import register


@dataclass
class CrosscoderConfig:
    init_decoder_norm: float = field(default=0.1, metadata={"help": (
        "norm of each latent's decoder segment at every layer at init (small, after Anthropic's April-2024 "
        "update; a latent's penalised norm Σ_l ‖W_dec,i^l‖ starts at n_layers times this); W_enc = W_dec^T")})


@register("arch", "crosscoder", CrosscoderConfig)
class CrosscoderSAE(SAE):
    """Rows x = [x^1, …, x^L] are one site at L layers side by side ([B, L·d], the source's layer order); the
    input and the target are both x.

    f = ReLU(Σ_l W_enc^l (x^l − b_dec^l) + b_enc)      one encoder over all layers (= ReLU((x − b_dec) W_enc + b_enc)
                                                       on the concatenation)
    x̂^l = f W_dec^l + b_dec^l                          a decoder segment per layer
    loss = Σ_l ‖x^l − x̂^l‖² + λ Σ_i f_i Σ_l ‖W_dec,i^l‖

    The penalty weights each latent by the L1 of its per-layer decoder norms (Lindsey et al.), handed to the
    penalty as ``SparsityInput.decoder_norms``: ``l1_decoder_norm`` (the default) computes exactly the term above,
    ``tanh`` saturates it. Plain ``l1`` is refused: it ignores decoder norms and this arch does not hold the
    per-layer decoder segments at unit norm, so it could be gamed by shrinking f against W_dec.

    Stored like an SAE on the concatenation (SAELens-style names): W_enc [L·d, d_sae], W_dec [d_sae, L·d] (W_dec^l
    = columns l·d … (l+1)·d), b_enc [d_sae], b_dec [L·d]; so ``decoder_directions`` are the unit concatenated
    directions in raw units.

    Scaling: layers have different activation norms (the residual stream grows with depth), so each layer is
    rescaled by its own ``layer_scales[l]`` (E‖x^l‖ = √d after scaling; ``input_scale`` stays 1, both folded into
    the weights exactly on save). The loss above is in these scaled units, so every layer counts alike whatever
    its raw norm. :meth:`layer_norms` gives the per-layer decoder norms in raw units.
    """

    layout = "layers"
    scale_buffers = ("input_scale", "layer_scales")
    # the same encoder as arch=l1, whose frontier gap sets its default (not tuned for crosscoders)
    default_target_l0 = 128
    default_penalty = "l1_decoder_norm"
    allowed_penalties = ("l1_decoder_norm", "tanh")
    unit_norm_decoder = False
    # no SAELens crosscoder format exists: saved under the plugin name (cfg.json: architecture "crosscoder",
    # d_in = n_layers·d, d_sae, n_layers, metadata.saefw.arch_config)

    def __init__(self, cfg: CrosscoderConfig, d_in: int, d_sae: int, n_layers: int):
        n_layers = int(n_layers)
        if n_layers < 1 or d_in % n_layers:
            raise SaefwError(f"arch=crosscoder: d_in={d_in} is not n_layers={n_layers} layers of one width "
                             f"(a crosscoder's rows are the site at each layer side by side)")
        super().__init__(cfg, d_in, d_sae)
        self.n_layers, self.d_layer = n_layers, d_in // n_layers
        w = torch.randn(d_sae, n_layers, self.d_layer)
        w = w / w.norm(dim=-1, keepdim=True) * cfg.init_decoder_norm
        w = w.reshape(d_sae, d_in)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("layer_scales", torch.ones(n_layers))

    # --- shape ---
    def shape_config(self) -> dict:
        return {"n_layers": self.n_layers}

    @classmethod
    def shape_kwargs(cls, cfg: dict) -> dict:
        return {"n_layers": int(cfg["n_layers"])}

    # --- scaling: per layer ---
    def column_scales(self) -> Tensor:
        """The scale of each of the L·d columns: ``input_scale · layer_scales[l]`` repeated over layer l's d."""
        return (self.layer_scales * self.input_scale).repeat_interleave(self.d_layer)

    def scale_rows(self, rows: Tensor) -> Tensor:
        return rows * self.column_scales().to(rows.dtype)

    def encode(self, x: Tensor) -> Tensor:
        return self._encode(self.scale_rows(x))

    def decode(self, f: Tensor) -> Tensor:
        return self._decode(f) / self.column_scales()

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor) -> None:
        """``layer_scales`` so that E‖x^l‖ = √d at every layer (``input_scale`` = 1), then b_dec = the geometric
        median of the scaled rows."""
        if not torch.isfinite(x).all():
            raise SaefwError(f"the activations contain NaN/inf ({(~torch.isfinite(x)).sum().item()} values in the "
                             f"first {len(x)} tokens): check the model's dtype and the hook site")
        x = x.to(self.layer_scales.device, torch.float32)
        mean_norms = x.reshape(len(x), self.n_layers, self.d_layer).norm(dim=-1).mean(0)
        self.input_scale.fill_(1.0)
        self.layer_scales.copy_(math.sqrt(self.d_layer) / mean_norms.clamp_min(1e-12))
        self.init_from_data(self.scale_rows(x))

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        """Fold ``s`` and ``layer_scales`` exactly: with c the column scales (s·layer_scales[l] over layer l),
        W_enc ← c ⊙ W_enc (rows), W_dec ← W_dec / c (columns), b_dec ← b_dec / c; ``layer_scales`` ← 1."""
        c = (self.layer_scales * s).repeat_interleave(self.d_layer)
        self.W_enc.mul_(c[:, None])
        self.W_dec.div_(c)
        self.b_dec.div_(c)
        self.layer_scales.fill_(1.0)

    # --- per-layer decoder norms ---
    def _segment_norms(self, w: Tensor) -> Tensor:
        return w.reshape(self.d_sae, self.n_layers, self.d_layer).norm(dim=-1)

    def layer_norms(self) -> Tensor:
        """‖W_dec,i^l‖ in raw activation units, [d_sae, n_layers] (what :mod:`saefw.relations.layer_profile`
        reads)."""
        return self._segment_norms(self.W_dec.detach() / self.column_scales())

    @property
    def decoder_directions(self) -> Tensor:
        """Unit-norm concatenated directions [d_sae, L·d] in raw activation units (not the scaled training space:
        the per-layer scales change directions, unlike a scalar)."""
        w = self.W_dec.detach() / self.column_scales()
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    # --- the maths, in the scaled space ---
    def _encode(self, x: Tensor) -> Tensor:
        return encoder_pre_acts(x, self.W_enc, self.b_enc, self.b_dec, relu=True)

    def train_forward(self, x, dead_mask=None) -> TrainOutput:
        f = self._encode(x)
        mse = (self._decode(f) - x).pow(2).sum(-1).mean()
        norms = self._segment_norms(self.W_dec).sum(-1)  # Σ_l ‖W_dec,i^l‖
        return TrainOutput(f, mse, SparsityInput(acts=f, W_dec=self.W_dec, decoder_norms=norms))
