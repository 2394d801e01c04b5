"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"): a learned per-latent threshold, trained with
straight-through pseudo-gradients and a direct L0 penalty."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saefw.arch.base import SAE, SparsityInput, TrainOutput
from saefw.registry import register


def rectangle(u: Tensor) -> Tensor:
    """The rectangle kernel K(u) = 1[|u| ≤ 1/2]."""
    return (u.abs() <= 0.5).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """y = z · H(z − θ).

    Backward (the paper's eq. 11): ∂y/∂z = H(z − θ) (the ordinary gradient; the jump itself is ignored), and the
    pseudo-derivative ∂y/∂θ = −(θ/ε)·K((z − θ)/ε), a kernel estimate of the jump of height θ at z = θ."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_out * (z > theta).to(grad_out.dtype)
        # θ is fp32; do the kernel arithmetic there so bf16 pre-activations do not blur the window edges
        zf, gf = z.float(), grad_out.float()
        grad_theta = -(theta / eps) * rectangle((zf - theta) / eps) * gf
        grad_theta = grad_theta.reshape(-1, theta.shape[-1]).sum(0)
        return grad_z, grad_theta, None


class StepFn(torch.autograd.Function):
    """y = H(z − θ).

    Backward (the paper's eq. 12): no gradient to z (so the L0 term only moves thresholds, never the encoder),
    and ∂y/∂θ = −(1/ε)·K((z − θ)/ε)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * rectangle((z.float() - theta) / eps) * grad_out.float()
        return None, grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


def jumprelu(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    return JumpReLUFn.apply(z, theta, bandwidth)


def step(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    return StepFn.apply(z, theta, bandwidth)


@dataclass
class JumpReLUConfig:
    # ε and the initial θ in "unit-norm" units (activations scaled so E‖x‖² = 1, as in the paper); the SAE
    # multiplies both by √d_in because this framework scales activations so E‖x‖ = √d_in. The paper uses 0.001
    # for both over 100k+ steps; 10x larger (0.24 at d_in = 576) lets thresholds reach useful values within the
    # few hundred steps of a CPU run (SmolLM2 layer 6, 300k tokens: L0 80, EV 0.91; synthetic: mmcs ≥ 0.95).
    bandwidth: float = field(default=0.01, metadata={"help": (
        "ε, the width of the straight-through kernel, in unit-norm units (times √d_in here; the paper: 0.001)")})
    init_threshold: float = field(default=0.01, metadata={"help": (
        "every latent's threshold θ at init, in unit-norm units (times √d_in here; the paper: 0.001)")})
    init_decoder_norm: float = field(default=0.1, metadata={"help": (
        "norm of the decoder rows at init (small, as l1's); W_enc = W_dec^T")})
    # Adam moves log θ by about lr per step, so at lr 1e-3 θ can grow at most e^0.3 ≈ 1.35x in 300 steps: far
    # too slow for runs of hundreds (not the paper's 100k+) of steps.
    threshold_lr_scale: float = field(default=20.0, metadata={"help": (
        "the thresholds' learning rate is train.lr times this")})


def _save_threshold(module, state_dict, prefix, local_metadata):
    # the saved (SAELens) tensor is the threshold itself; log_threshold is only the training parametrisation
    state_dict[prefix + "threshold"] = state_dict.pop(prefix + "log_threshold").exp()


def _load_threshold(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    if prefix + "threshold" in state_dict:
        th = state_dict.pop(prefix + "threshold").float()
        state_dict[prefix + "log_threshold"] = th.clamp_min(torch.finfo(torch.float32).tiny).log()


def threshold_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A SAELens JumpReLU weights file with an older checkpoint's ``log_threshold`` read as ``threshold``."""
    if "threshold" not in tensors and "log_threshold" in tensors:
        tensors = {**tensors, "threshold": tensors["log_threshold"].exp()}
        del tensors["log_threshold"]
    return tensors


@register("arch", "jumprelu", JumpReLUConfig)
class JumpReLUSAE(SAE):
    """z = (x − b_dec) W_enc + b_enc;   f = JumpReLU_θ(z) = z ⊙ H(z − θ);   x̂ = f W_dec + b_dec;
    loss = ‖x − x̂‖² + λ·P,   P = E[‖f‖₀] = E[Σ_i H(z_i − θ_i)] by default (penalty=l0).

    θ = exp(log_threshold) > 0 per latent, an fp32 parameter (log-parametrised so Adam's steps are relative to
    θ's own size). H has zero gradient almost everywhere, so training uses straight-through pseudo-gradients
    with the rectangle kernel K(u) = 1[|u| ≤ 1/2] of bandwidth ε:
        ∂JumpReLU/∂θ = −(θ/ε)·K((z − θ)/ε),   ∂H/∂θ = −(1/ε)·K((z − θ)/ε),
    z gets the ordinary gradient H(z − θ) through JumpReLU and none through H.

    Saved tensors: W_enc, W_dec, b_enc, b_dec and ``threshold`` (= θ, SAELens name)."""

    saelens_architecture = "jumprelu"
    saelens_reads = ("jumprelu",)

    default_penalty = "l0"
    allowed_penalties = ("l0", "tanh", "l1_decoder_norm")
    unit_norm_decoder = False  # L0 and the decoder-norm-weighted penalties are invariant to f ↔ W_dec rescaling

    def __init__(self, cfg: JumpReLUConfig, d_in: int, d_sae: int):
        super().__init__(cfg, d_in, d_sae)
        unit = math.sqrt(d_in)  # paper units → ours (see JumpReLUConfig)
        self.bandwidth = cfg.bandwidth * unit
        self.init_tied_weights(cfg.init_decoder_norm)
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(cfg.init_threshold * unit)))
        self.register_state_dict_post_hook(_save_threshold)
        self.register_load_state_dict_pre_hook(_load_threshold)

    @classmethod
    def saelens_tensors(cls, architecture, tensors):
        return threshold_tensors(tensors)

    @classmethod
    def saelens_tensor_names(cls, architecture: str) -> set[str]:
        return {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}

    def _apply(self, fn, recurse=True):
        # keep θ in fp32 under .half()/.to(bfloat16): a bf16 θ has 3 significant digits, coarser than ε
        super()._apply(fn, recurse)
        if self.log_threshold.dtype != torch.float32:
            self.log_threshold.data = self.log_threshold.data.float()
        return self

    def param_groups(self, lr: float) -> list[dict]:
        rest = [p for name, p in self.named_parameters() if name != "log_threshold"]
        return [{"params": rest, "lr": lr}, {"params": [self.log_threshold], "lr": lr * self.cfg.threshold_lr_scale}]

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def _encode(self, x: Tensor) -> Tensor:
        z = self.pre_acts(x)
        return z * (z > self.threshold).to(z.dtype)

    def train_forward(self, x, dead_mask=None) -> TrainOutput:
        z = self.pre_acts(x)
        theta = self.threshold
        f = jumprelu(z, theta, self.bandwidth)
        mse = (self._decode(f) - x).pow(2).sum(-1).mean()
        l0 = step(z, theta, self.bandwidth).sum(-1)
        return TrainOutput(f, mse, SparsityInput(acts=f, W_dec=self.W_dec, l0=l0))
