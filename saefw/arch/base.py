"""The SAE interface every architecture implements.

Evaluators, analysis and steering only use ``encode``/``decode``/``decoder_directions``, never the arch name.

Activations are rescaled by a scalar ``input_scale`` so that E‖x‖ = √d_in during training (as SAELens does):
a sparsity coefficient then means the same thing at every model, layer and site. ``encode``/``decode`` take
and return raw activations; subclasses implement ``_encode``/``_decode`` and ``loss`` in the scaled space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class SparsityInput:
    """What a penalty sees: ``acts`` [B, d_sae] (non-negative), the decoder ``W_dec`` [d_sae, d_in], and for
    threshold archs ``l0`` [B], a per-token L0 carrying a straight-through gradient."""

    acts: Tensor
    W_dec: Tensor
    l0: Tensor | None = None


@dataclass
class TrainOutput:
    """An arch's training forward on scaled activations: unweighted terms, composed by
    :func:`saefw.sparsity.compose_loss` into ``mse + Σ aux + λ·P(sparsity)``.

    ``f`` [B, d_sae] the latents; ``mse`` = E‖x − x̂‖²; ``sparsity`` what the penalty P reads; ``aux`` extra loss
    terms added as they are (their weights are arch options, e.g. AuxK's α), keyed by their logged names;
    ``logs`` detached values only logged (never added to the loss)."""

    f: Tensor
    mse: Tensor
    sparsity: SparsityInput
    aux: dict[str, Tensor] = field(default_factory=dict)
    logs: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    """``loss`` to minimise, ``terms`` (detached scalars) to log, ``f`` the latents of the batch."""

    loss: Tensor
    f: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class SAE(nn.Module):
    """Base class: ``f = encode(x)``, ``x̂ = decode(f)``, ``loss(x_scaled, penalty, coefficient)``.

    An arch whose inference is exactly one of SAELens's architectures says so in its own class body, e.g.
    ``saelens_architecture = "topk"``; its saved directories then load in SAELens. The declaration is read from
    that class only, never inherited (:func:`saefw.saelens_format.saelens_architecture`): a subclass that
    changes encode/decode must not claim its parent's SAELens equivalent."""

    plugin_name = "?"
    # the L0 this arch aims at when the run sets no target_l0 (its k, for the top-k archs); see each arch
    default_target_l0 = 32
    default_penalty = "l1_decoder_norm"
    allowed_penalties: tuple[str, ...] = ("l1", "l1_decoder_norm", "tanh")
    unit_norm_decoder = False

    def __init__(self, cfg, d_in: int, d_sae: int):
        super().__init__()
        self.cfg, self.d_in, self.d_sae = cfg, d_in, d_sae
        self.register_buffer("input_scale", torch.tensor(1.0))

    def init_tied_weights(self, decoder_norm: float, encoder_bias: bool = True) -> None:
        """W_dec: random rows of norm ``decoder_norm``; W_enc = W_decᵀ; zero b_dec (and b_enc)."""
        w = torch.randn(self.d_sae, self.d_in)
        w = w / w.norm(dim=-1, keepdim=True) * decoder_norm
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())
        if encoder_bias:
            self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))

    def pre_acts(self, x: Tensor) -> Tensor:
        """z = (x − b_dec) W_enc + b_enc."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    # --- the interface used by everything outside training ---
    def encode(self, x: Tensor) -> Tensor:
        return self._encode(x * self.input_scale)

    def decode(self, f: Tensor) -> Tensor:
        return self._decode(f) / self.input_scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @property
    def W_dec_param(self) -> Tensor:
        return self.W_dec

    @property
    def decoder_directions(self) -> Tensor:
        """Unit-norm feature directions [d_sae, d_in] in activation space."""
        w = self.W_dec_param.detach()
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    # --- implemented by architectures ---
    def _encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def train_forward(self, x: Tensor, dead_mask: Tensor | None = None) -> TrainOutput:
        """The training forward on scaled activations ``x`` [B, d_in]; ``dead_mask`` [d_sae] marks dead latents."""
        raise NotImplementedError

    def loss(self, x: Tensor, penalty, coefficient: float | Tensor, dead_mask: Tensor | None = None) -> LossOutput:
        """``mse + Σ aux + coefficient·penalty`` on scaled ``x`` (see :func:`saefw.sparsity.compose_loss`)."""
        from saefw.sparsity import compose_loss

        return compose_loss(self.train_forward(x, dead_mask), penalty, coefficient)

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor) -> None:
        """Data-dependent init from raw activations [N, d_in]: ``input_scale`` so that E‖x‖ = √d_in, then
        :meth:`init_from_data` on the scaled activations."""
        from saefw.errors import SaefwError

        if not torch.isfinite(x).all():
            raise SaefwError(f"the activations contain NaN/inf ({(~torch.isfinite(x)).sum().item()} values in the "
                             f"first {len(x)} tokens): check the model's dtype and the hook site")
        x = x.to(self.input_scale.device, torch.float32)
        self.input_scale.fill_(math.sqrt(self.d_in) / x.norm(dim=-1).mean().clamp_min(1e-12).item())
        self.init_from_data(x * self.input_scale)

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Data-dependent init on scaled activations (default: b_dec = geometric median)."""
        self.b_dec.copy_(geometric_median(x))

    # --- optimisation hooks ---
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        w = self.W_dec_param
        w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of ∇W_dec the component along each (unit) row, so the unit-norm constraint costs no
        step size (Bricken et al. 2023)."""
        w, g = self.W_dec_param, self.W_dec_param.grad
        if g is None:
            return
        unit = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        g.sub_((g * unit).sum(-1, keepdim=True) * unit)

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups; an arch overrides this to give some parameters their own learning rate."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def finalize_for_inference(self, batches) -> None:
        """Called once after training with an iterator of scaled training batches (batchtopk fits its threshold)."""

    # --- saving (SAELens tensor names) ---
    def saved_tensors(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items()}


@torch.no_grad()
def geometric_median(x: Tensor, iters: int = 50, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: argmin_y Σ‖x_i − y‖ (robust to the outlier tokens that skew the mean)."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(eps)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < eps * (1 + y.norm()):
            return y_new
        y = y_new
    return y


def auxk_loss(pre_acts: Tensor, x: Tensor, x_hat: Tensor, W_dec: Tensor, dead_mask: Tensor | None,
              k_aux: int) -> Tensor:
    """AuxK (Gao et al. 2024): reconstruct the main residual e = x − x̂ (a fixed target) from the top-``k_aux``
    *dead* latents, ê = Σ_{i ∈ TopK_aux(dead)} ReLU(z_i) W_dec,i.

    Gao et al. add α·NMSE(ê, e) to NMSE(x̂, x). Our main term is the unnormalised ‖x − x̂‖², i.e. their NMSE times
    V_x = E‖x − x̄‖², so the aux term is returned on the same scale: V_x · E‖e − ê‖² / E‖e − ē‖². That keeps
    α = 1/32 meaning what it means in the paper. Zero when no latent is dead."""
    if dead_mask is None or not bool(dead_mask.any()):
        return pre_acts.new_zeros(())
    k = min(k_aux, int(dead_mask.sum()))
    masked = pre_acts.masked_fill(~dead_mask, float("-inf"))
    vals, idx = masked.topk(k, dim=-1)
    acts = torch.zeros_like(pre_acts).scatter(-1, idx, torch.relu(vals))
    e = (x - x_hat).detach()
    err = (acts @ W_dec - e).pow(2).sum(-1).mean()
    v_x = (x - x.mean(0)).pow(2).sum(-1).mean().detach()
    return v_x * err / (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
