"""Transcoder (Dunefsky et al. 2024, "Transcoders find interpretable LLM feature circuits"): a sparse dictionary
that reads one hook point (an MLP's input) and reconstructs another (that MLP's output), with a TopK or a
JumpReLU activation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saefw.arch.base import SAE, SparsityInput, TrainOutput, auxk_loss, geometric_median
from saefw.arch.jumprelu import _load_threshold, _save_threshold, jumprelu, step, threshold_tensors
from saefw.arch.topk import resolve_k
from saefw.errors import SaefwError
from saefw.registry import register

ACTIVATIONS = ("topk", "jumprelu")
# decoder-row norm at init, per activation: TopK's unit rows; JumpReLU's small rows (as JumpReLUConfig's default)
INIT_NORM = {"topk": 1.0, "jumprelu": 0.1}


@dataclass
class TranscoderConfig:
    activation: str = field(default="topk", metadata={"help": (
        "topk (k latents per token, penalty=none) | jumprelu (learned thresholds, penalty=l0)")})
    k: int | None = field(default=None, metadata={"help": (
        "activation=topk: latents kept per token; null: the run's target_l0 (unused by jumprelu)")})
    k_aux: int | None = field(default=None, metadata={"help": (
        "activation=topk: dead latents the AuxK loss may use; null: d_out // 2 (Gao et al.'s d // 2)")})
    aux_coefficient: float = field(default=1 / 32, metadata={"help": (
        "activation=topk: α, the AuxK loss's weight (Gao et al.: 1/32)")})
    bandwidth: float = field(default=0.01, metadata={"help": (
        "activation=jumprelu: ε of the straight-through kernel, in unit-norm units (times √d_in here)")})
    init_threshold: float = field(default=0.01, metadata={"help": (
        "activation=jumprelu: every latent's threshold θ at init, in unit-norm units (times √d_in here)")})
    threshold_lr_scale: float = field(default=20.0, metadata={"help": (
        "activation=jumprelu: the thresholds' learning rate is train.lr times this")})


def _jumprelu_name(sae, name: str) -> str | None:
    return name if sae.activation == "jumprelu" else None


@register("arch", "transcoder", TranscoderConfig)
class TranscoderSAE(SAE):
    """Reads x [B, d_in] (the input site), reconstructs y [B, d_out] (the target site); in the scaled space
    (x·s_in with E‖x‖ = √d_in, y·s_out with E‖y‖ = √d_out):

        z = x W_enc + b_enc                              (no b_dec subtraction: b_dec lives in the output space)
        f = ReLU(TopK_k(z))                              (activation=topk; penalty=none)
        f = z ⊙ H(z − θ)                                 (activation=jumprelu; penalty=l0, θ = exp(log_threshold))
        ŷ = f W_dec + b_dec
        loss = ‖y − ŷ‖² + α·AuxK(z, y − ŷ)               (topk: the residual from the top-k_aux dead latents)
        loss = ‖y − ŷ‖² + λ·E[Σ_i H(z_i − θ_i)]          (jumprelu: L0 with straight-through gradients, as jumprelu)

    Shapes: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out], θ [d_sae]. ``encode`` takes
    raw input activations, ``decode`` returns raw target activations (``/ target_scale``). TopK holds the decoder
    rows at unit norm; JumpReLU does not (L0 is invariant to f ↔ W_dec rescaling). W_enc is initialised with
    random unit-direction columns (times 0.1 for jumprelu), W_dec with random rows of the same norm (no tying:
    the two live in different spaces), b_dec with the geometric median of the scaled targets.

    The penalty must fit the activation: ``penalty=none`` with topk, ``penalty=l0`` with jumprelu (both are in
    ``allowed_penalties``; :meth:`penalties_for` tells the run which, and another pair is refused).

    Saved (cfg.json ``apply_b_dec_to_input: false``, ``d_out``): activation=jumprelu as SAELens's
    ``jumprelu_transcoder`` (tensors W_enc, b_enc, W_dec, b_dec, threshold: ``SAE.load_from_disk`` computes the
    same latents and outputs); activation=topk under saefw's own architecture name ``topk_transcoder`` (with
    ``k``), which SAELens does not have (its ``transcoder`` is a ReLU transcoder, so that name is never used).
    SAELens's ReLU ``transcoder`` is not read (no ReLU activation here)."""

    layout = "pair"
    scale_buffers = ("input_scale", "target_scale")
    saelens_architecture = property(lambda self: _jumprelu_name(self, "jumprelu_transcoder"))
    saved_architecture = property(lambda self: f"{self.activation}_transcoder")
    saelens_reads = ("jumprelu_transcoder",)

    default_penalty = "none"
    allowed_penalties = ("none", "l0")
    unit_norm_decoder = True  # set per instance: False for jumprelu

    def __init__(self, cfg: TranscoderConfig, d_in: int, d_sae: int, d_out: int):
        super().__init__(cfg, d_in, d_sae)
        if cfg.activation not in ACTIVATIONS:
            raise SaefwError(f"arch.activation={cfg.activation!r} is invalid for {self.plugin_name}: choose one "
                             f"of {', '.join(ACTIVATIONS)}")
        if not isinstance(d_out, int) or isinstance(d_out, bool) or d_out < 1:
            raise SaefwError(f"d_out={d_out!r} is invalid for {self.plugin_name}: it must be a positive integer")
        self.d_out = d_out
        self.activation = cfg.activation
        self.register_buffer("target_scale", torch.tensor(1.0))
        norm = INIT_NORM[self.activation]
        w_enc = torch.randn(d_in, d_sae)
        self.W_enc = nn.Parameter(w_enc / w_enc.norm(dim=0, keepdim=True) * norm)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        w_dec = torch.randn(d_sae, d_out)
        self.W_dec = nn.Parameter(w_dec / w_dec.norm(dim=-1, keepdim=True) * norm)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if self.activation == "topk":
            self.k, self.k_aux = resolve_k(self.plugin_name, cfg.k, cfg.k_aux, d_out, d_sae)
            self.unit_norm_decoder = True
        else:
            unit = math.sqrt(d_in)  # paper units → ours: z scales with the input (see JumpReLUConfig)
            self.bandwidth = cfg.bandwidth * unit
            self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(cfg.init_threshold * unit)))
            self.register_state_dict_post_hook(_save_threshold)
            self.register_load_state_dict_pre_hook(_load_threshold)
            self.unit_norm_decoder = False

    @classmethod
    def penalties_for(cls, arch_cfg: dict) -> tuple[str, ...]:
        """topk takes ``none`` (k sets the sparsity), jumprelu ``l0`` (without it nothing makes it sparse)."""
        return {"topk": ("none",), "jumprelu": ("l0",)}.get(arch_cfg.get("activation"), cls.allowed_penalties)

    # --- rows and scales ---
    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(input [..., d_in], target [..., d_out]) of rows [..., d_in + d_out], raw or scaled alike."""
        if rows.shape[-1] != self.d_in + self.d_out:
            raise SaefwError(f"{self.plugin_name} reads rows of d_in + d_out = {self.d_in} + {self.d_out} columns "
                             f"(input then target); got {rows.shape[-1]}")
        return rows[..., :self.d_in], rows[..., self.d_in:]

    def scale_rows(self, rows: Tensor) -> Tensor:
        x, y = self.split_rows(rows)
        return torch.cat([x * self.input_scale, y * self.target_scale], dim=-1)

    def shape_config(self) -> dict:
        return {"d_out": self.d_out}

    @classmethod
    def shape_kwargs(cls, cfg: dict) -> dict:
        return {"d_out": int(cfg["d_out"])}

    @torch.no_grad()
    def initialize_from_data(self, rows: Tensor) -> None:
        """From raw rows [N, d_in + d_out]: ``input_scale`` so that E‖x‖ = √d_in, ``target_scale`` so that
        E‖y‖ = √d_out, then b_dec = the geometric median of the scaled targets."""
        if not torch.isfinite(rows).all():
            raise SaefwError(f"the activations contain NaN/inf ({(~torch.isfinite(rows)).sum().item()} values in "
                             f"the first {len(rows)} tokens): check the model's dtype and the hook sites")
        x, y = self.split_rows(rows.to(self.input_scale.device, torch.float32))
        self.input_scale.fill_(math.sqrt(self.d_in) / x.norm(dim=-1).mean().clamp_min(1e-12).item())
        self.target_scale.fill_(math.sqrt(self.d_out) / y.norm(dim=-1).mean().clamp_min(1e-12).item())
        self.init_from_data(torch.cat([x * self.input_scale, y * self.target_scale], dim=-1))

    @torch.no_grad()
    def init_from_data(self, rows: Tensor) -> None:
        self.b_dec.copy_(geometric_median(self.split_rows(rows)[1]))

    # --- the maths (scaled space) ---
    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def pre_acts(self, x: Tensor) -> Tensor:
        """z = x W_enc + b_enc (no b_dec: it is in the output space)."""
        return x @ self.W_enc + self.b_enc

    def activate(self, z: Tensor) -> Tensor:
        """f from z at inference (the hard threshold, no straight-through graph)."""
        if self.activation == "topk":
            vals, idx = z.topk(self.k, dim=-1)
            return torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))
        return z * (z > self.threshold).to(z.dtype)

    def _encode(self, x: Tensor) -> Tensor:
        return self.activate(self.pre_acts(x))

    def _decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """ŷ = f W_dec + b_dec (``x``, the scaled input, is for the skip transcoder's term)."""
        return f @ self.W_dec + self.b_dec

    # --- the interface used by everything outside training (raw units) ---
    def decode(self, f: Tensor, x_in: Tensor | None = None) -> Tensor:
        """Raw target activations from latents; ``x_in`` (raw input activations) only matters to the skip
        transcoder, whose output adds x W_skipᵀ (without it, decode(f) is the dictionary's part alone, as
        SAELens's ``decode``)."""
        x = None if x_in is None else x_in * self.input_scale
        return self._decode(f, x) / self.target_scale

    def forward(self, x_in: Tensor) -> tuple[Tensor, Tensor]:
        """(ŷ, f) for raw input activations: the whole reconstruction, the skip term included."""
        f = self.encode(x_in)
        return self.decode(f, x_in), f

    def train_forward(self, rows, dead_mask=None) -> TrainOutput:
        """On scaled rows [B, d_in + d_out]."""
        x, y = self.split_rows(rows)
        z = self.pre_acts(x)
        if self.activation == "topk":
            f = self.activate(z)
            y_hat = self._decode(f, x)
            mse = (y_hat - y).pow(2).sum(-1).mean()
            aux = self.cfg.aux_coefficient * auxk_loss(z, y, y_hat, self.W_dec, dead_mask, self.k_aux)
            return TrainOutput(f, mse, SparsityInput(acts=f, W_dec=self.W_dec), {"aux_loss": aux})
        theta = self.threshold
        f = jumprelu(z, theta, self.bandwidth)
        mse = (self._decode(f, x) - y).pow(2).sum(-1).mean()
        l0 = step(z, theta, self.bandwidth).sum(-1)
        return TrainOutput(f, mse, SparsityInput(acts=f, W_dec=self.W_dec, l0=l0))

    def param_groups(self, lr: float) -> list[dict]:
        if self.activation != "jumprelu":
            return super().param_groups(lr)
        rest = [p for name, p in self.named_parameters() if name != "log_threshold"]
        return [{"params": rest, "lr": lr}, {"params": [self.log_threshold], "lr": lr * self.cfg.threshold_lr_scale}]

    def _apply(self, fn, recurse=True):
        # keep θ in fp32 under .half()/.to(bfloat16), as jumprelu does
        super()._apply(fn, recurse)
        th = getattr(self, "log_threshold", None)
        if th is not None and th.dtype != torch.float32:
            th.data = th.data.float()
        return self

    # --- saving ---
    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        """Both scales folded exactly: with s_in = ``s`` and s_out = ``target_scale``, z = (x·s_in) W_enc + b_enc =
        x (s_in W_enc) + b_enc (so b_enc and θ, in z's units, are unchanged) and ŷ_raw = ŷ / s_out:
        W_enc·s_in, W_dec/s_out, b_dec/s_out (and the skip's W_skip·s_in/s_out); ``target_scale`` becomes 1."""
        t = self.target_scale.item()
        self.W_enc.mul_(s)
        self.W_dec.div_(t)
        self.b_dec.div_(t)
        if hasattr(self, "W_skip"):
            self.W_skip.mul_(s / t)
        self.target_scale.fill_(1.0)

    def saelens_config(self) -> dict:
        """``apply_b_dec_to_input: false`` (SAELens requires it of transcoders), and topk's ``k``."""
        return {"apply_b_dec_to_input": False, **({"k": self.k} if self.activation == "topk" else {})}

    @classmethod
    def saelens_tensors(cls, architecture, tensors):
        return threshold_tensors(tensors)

    @classmethod
    def saelens_tensor_names(cls, architecture: str) -> set[str]:
        return {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}

    @classmethod
    def from_saelens(cls, architecture, cfg, t, where):
        """``{"activation": "jumprelu"}``: SAELens's relu(z)·H(z − θ) is z·H(z − θ) for θ ≥ 0; a θ ≤ 0 is read as the
        smallest positive float (the same latents but for z in (0, 1e-38])."""
        if cfg.get("apply_b_dec_to_input", False):
            raise SaefwError(f"{where}: apply_b_dec_to_input=True is not supported: a transcoder's b_dec is in the "
                             f"output space (SAELens refuses it too)")
        return {"activation": "jumprelu"}
