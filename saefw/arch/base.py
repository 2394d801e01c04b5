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

from saefw.arch.ops import SparseLatents, encoder_pre_acts, sparse_decode
from saefw.errors import SaefwError
from saefw.io.saelens_format import fold_b_dec_input


@dataclass
class SparsityInput:
    """What a penalty sees: ``acts`` [B, d_sae] (non-negative), the decoder ``W_dec`` [d_sae, d_out], for
    threshold archs ``l0`` [B], a per-token L0 carrying a straight-through gradient, and ``decoder_norms`` [d_sae]
    where a latent's decoder norm is not ‖W_dec,i‖ (a crosscoder: Σ_l ‖W_dec,i^l‖ over the layers it writes)."""

    acts: Tensor
    W_dec: Tensor
    l0: Tensor | None = None
    decoder_norms: Tensor | None = None

    def norms(self) -> Tensor:
        """‖W_dec,i‖ per latent [d_sae], or ``decoder_norms`` where the arch gives them."""
        return self.W_dec.norm(dim=-1) if self.decoder_norms is None else self.decoder_norms


@dataclass
class TrainOutput:
    """An arch's training forward on scaled activations: unweighted terms, composed by
    :func:`saefw.training.sparsity.compose_loss` into ``mse + Σ aux + λ·P(sparsity)``.

    ``f`` [B, d_sae] the latents (a dense tensor, or :class:`~saefw.arch.ops.SparseLatents` from the top-k archs,
    whose ``.dense()`` gives the tensor); ``mse`` = E‖x − x̂‖²; ``sparsity`` what the penalty P reads; ``aux`` extra loss
    terms added as they are (their weights are arch options, e.g. AuxK's α), keyed by their logged names;
    ``logs`` detached values only logged (never added to the loss)."""

    f: Tensor | SparseLatents
    mse: Tensor
    sparsity: SparsityInput
    aux: dict[str, Tensor] = field(default_factory=dict)
    logs: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    """``loss`` to minimise, ``terms`` (detached scalars) to log, ``f`` the latents of the batch."""

    loss: Tensor
    f: Tensor | SparseLatents
    terms: dict[str, Tensor] = field(default_factory=dict)


class SAE(nn.Module):
    """Base class: ``f = encode(x)``, ``x̂ = decode(f)``, ``loss(x_scaled, penalty, coefficient)``.

    An arch carries its own SAELens mapping, so :mod:`saefw.io.saelens_format` never names an arch:

    * ``saelens_architecture = "topk"`` in the class body: the SAELens architecture that computes exactly what this
      class computes at inference; its saved directories then load in SAELens. Read from that class only, never
      inherited (:func:`saefw.io.saelens_format.saelens_architecture`): a subclass that changes encode/decode must
      not claim its parent's SAELens equivalent. Export then calls :meth:`saelens_config`,
      :meth:`saelens_metadata` and :meth:`saelens_state`.
    * ``saelens_reads = ("topk",)`` in the class body: the SAELens architectures this class imports, likewise
      never inherited; :meth:`saelens_tensors`, :meth:`saelens_tensor_names` and :meth:`from_saelens` read them.
      ``saelens_priority`` orders the archs reading one architecture (highest asked first; a directory saved by
      an arch is offered to that arch first), and an arch declines a directory by returning None.

    The hooks are inherited: a subclass that declares a different SAELens architecture overrides them.

    ``layout`` says what the dictionary reads and writes, and the source must serve the same rows (checked when the
    run builds the SAE): ``"site"`` one hook point in and out (rows [B, d_in]); ``"pair"`` one site in and another
    out (transcoders: rows [B, d_in + d_out], input then target, built with ``d_out``); ``"layers"`` one site at
    several layers in and out (crosscoders: rows are the layers side by side, built with ``n_layers``).
    :meth:`split_rows` turns rows into (what the encoder reads, what the decoder must reproduce); everything
    outside the arch goes through it, so the store, the shuffle buffer, resume and DDP only ever see rows.
    """

    layout = "site"
    # training-time scales folded into the weights when saving (:meth:`fold_input_scale`), never saved themselves
    scale_buffers: tuple[str, ...] = ("input_scale",)

    plugin_name = "?"
    # the L0 this arch aims at when the run sets no target_l0 (its k, for the top-k archs); see each arch
    default_target_l0 = 32
    default_penalty = "l1_decoder_norm"
    allowed_penalties: tuple[str, ...] = ("l1", "l1_decoder_norm", "tanh")
    unit_norm_decoder = False
    saelens_priority = 0

    def __init__(self, cfg, d_in: int, d_sae: int):
        super().__init__()
        self.cfg, self.d_in, self.d_sae = cfg, d_in, d_sae
        self.d_out = d_in  # what the decoder writes; a "pair" arch (transcoder) sets its own
        self.register_buffer("input_scale", torch.tensor(1.0))

    def init_tied_weights(self, decoder_norm: float, encoder_bias: bool = True) -> None:
        """W_dec: random rows of norm ``decoder_norm``; W_enc = W_decᵀ; zero b_dec (and b_enc)."""
        w = torch.randn(self.d_sae, self.d_in)
        w = w / w.norm(dim=-1, keepdim=True) * decoder_norm
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().contiguous())  # row-major like its gradient: no layout copy per step
        if encoder_bias:
            self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))

    def pre_acts(self, x: Tensor) -> Tensor:
        """z = (x − b_dec) W_enc + b_enc  (its ∇b_dec costs a matrix-vector product: see
        :func:`~saefw.arch.ops.encoder_pre_acts`)."""
        return encoder_pre_acts(x, self.W_enc, self.b_enc, self.b_dec)

    @classmethod
    def penalties_for(cls, arch_cfg: dict) -> tuple[str, ...]:
        """The penalties an SAE built from ``arch_cfg`` trains with: ``allowed_penalties``, unless its options
        narrow them (a transcoder's activation)."""
        return cls.allowed_penalties

    # --- rows: what sources serve (see ``layout``) ---
    def split_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(encoder input, reconstruction target) of source rows, raw or scaled alike: for a "site" SAE both are
        the rows themselves."""
        return rows, rows

    def scale_rows(self, rows: Tensor) -> Tensor:
        """Raw source rows → the scaled space ``train_forward`` works in (``input_scale`` times the rows)."""
        return rows * self.input_scale

    @property
    def saved_architecture(self) -> str:
        """cfg.json's ``architecture`` when no SAELens architecture computes what this SAE computes: the plugin
        name, unless SAELens uses that name for something else (a ReLU ``transcoder``)."""
        return self.plugin_name

    def shape_config(self) -> dict:
        """cfg.json fields, beyond d_in and d_sae, that rebuilding this SAE needs (a transcoder's ``d_out``)."""
        return {}

    @classmethod
    def shape_kwargs(cls, cfg: dict) -> dict:
        """The constructor's keyword arguments beyond d_in and d_sae from a saved cfg.json (see
        :meth:`shape_config`)."""
        return {}

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
        """``mse + Σ aux + coefficient·penalty`` on scaled ``x`` (see :func:`compose_loss`)."""
        return compose_loss(self.train_forward(x, dead_mask), penalty, coefficient)

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor) -> None:
        """Data-dependent init from raw activations [N, d_in]: ``input_scale`` so that E‖x‖ = √d_in, then
        :meth:`init_from_data` on the scaled activations."""
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
    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        """In place: make the weights take raw activations with ``input_scale`` = 1, the scalar ``s`` folded into
        them (saving calls this on a copy: a saved SAE has no ``input_scale``). The default, W_enc·s, W_dec/s,
        b_dec/s, is exact for an arch whose encoder reads W_enc(x − b_dec) and whose decoder is its own
        parameter; an arch that ties or derives its weights (a decoder computed from the encoder) overrides it."""
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)

    def saved_tensors(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items()}

    # --- the SAELens mapping (see the class docstring; called by saefw.io.saelens_format) ---
    def saelens_config(self) -> dict:
        """Fields this SAE adds to the top level of its cfg.json, SAELens architecture or not (e.g. topk's ``k``, a
        transcoder's ``apply_b_dec_to_input: false``). Default: none."""
        return {}

    def saelens_metadata(self) -> dict:
        """Fields this SAE adds to its cfg.json's ``metadata`` block, which SAELens keeps when it re-saves the
        SAE (e.g. BatchTopK's ``training_architecture``). Default: none."""
        return {}

    def saelens_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The weights file in SAELens form from this SAE's state dict (``input_scale`` already folded and
        dropped): rename, fold or drop the tensors SAELens does not have. Default: the state dict as it is."""
        return state

    @classmethod
    def saelens_tensors(cls, architecture: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """A SAELens ``architecture`` weights file with tensors renamed to the names this class reads (e.g. an
        older checkpoint's ``log_threshold`` as ``threshold``). Default: as it is."""
        return tensors

    @classmethod
    def saelens_tensor_names(cls, architecture: str) -> set[str]:
        """The tensors a SAELens ``architecture`` weights file must hold, after :meth:`saelens_tensors`; any
        other set is refused naming what is extra and what is missing. Default: SAELens's standard four."""
        return {"W_enc", "W_dec", "b_enc", "b_dec"}

    @classmethod
    def from_saelens(cls, architecture: str, cfg: dict, t: dict[str, Tensor], where: str) -> dict | None:
        """This class's arch config for a SAELens ``architecture`` directory (``cfg`` its cfg.json), folding
        SAELens's options into the float tensors ``t`` in place so that this class computes what SAELens does;
        None declines the directory (the next reader is asked). Raises :class:`~saefw.errors.SaefwError`
        (prefixed with ``where``) for a value it cannot reproduce. Default: ``apply_b_dec_to_input`` folded into
        b_enc, no options."""
        fold_b_dec_input(cfg, t)
        return {}


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


def auxk_entries(z: Tensor, dead_mask: Tensor | None, k_aux: int, masked: bool | None = None):
    """The AuxK selection on pre-activations ``z`` [B, d_sae] (no gradient): per token, the top-``k_aux`` *dead*
    latents. Returns None when nothing can be selected, else ``(rows, cols, keep)``: entries grouped by row, and
    ``keep`` None or a 0/1 weight per entry that zeroes picks which are not dead.

    Knowing whether any latent is dead, and how many, would need a host synchronisation on an accelerator, so there
    every token takes exactly min(k_aux, d_sae) picks from z with live latents masked to −∞, and ``keep`` zeroes
    the live ones (a token with fewer dead latents than k_aux then gets the dead ones and zeros, as it would with
    k = #dead). On the CPU the count is free, so only the dead columns are searched. ``masked`` forces one way."""
    if dead_mask is None:
        return None
    B = z.shape[0]
    if not (z.device.type != "cpu" if masked is None else masked):
        dead = dead_mask.nonzero().squeeze(1)
        if dead.numel() == 0:
            return None
        top = z.index_select(1, dead).topk(min(k_aux, dead.numel()), dim=-1).indices
        rows = torch.arange(B, device=z.device).repeat_interleave(top.shape[1])
        return rows, dead[top.reshape(-1)], None
    k = min(k_aux, z.shape[1])
    top = z.masked_fill(~dead_mask, float("-inf")).topk(k, dim=-1).indices.reshape(-1)
    rows = torch.arange(B, device=z.device).repeat_interleave(k)
    return rows, top, dead_mask[top].to(z.dtype)


def auxk_from_entries(aux_pre: Tensor, entries, x: Tensor, x_hat: Tensor, W_dec: Tensor) -> Tensor:
    """The AuxK term (see :func:`auxk_loss`) from the pre-activations ``aux_pre`` [N] at ``entries`` (from
    :func:`auxk_entries`), decoded sparsely."""
    rows, cols, keep = entries
    acts = torch.relu(aux_pre) if keep is None else torch.relu(aux_pre) * keep
    e = (x - x_hat).detach()
    e_hat = sparse_decode(SparseLatents(acts, rows, cols, (x.shape[0], W_dec.shape[0])), W_dec)
    err = (e_hat.to(e.dtype) - e).pow(2).sum(-1).mean()
    v_x = (x - x.mean(0)).pow(2).sum(-1).mean().detach()
    out = v_x * err / (e - e.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
    return out if keep is None else out * (keep.sum() > 0).to(out.dtype)  # 0 when no latent is dead


def auxk_loss(pre_acts: Tensor, x: Tensor, x_hat: Tensor, W_dec: Tensor, dead_mask: Tensor | None,
              k_aux: int) -> Tensor:
    """AuxK (Gao et al. 2024): reconstruct the main residual e = x − x̂ (a fixed target) from the top-``k_aux``
    *dead* latents, ê = Σ_{i ∈ TopK_aux(dead)} ReLU(z_i) W_dec,i.

    Gao et al. add α·NMSE(ê, e) to NMSE(x̂, x). Our main term is the unnormalised ‖x − x̂‖², i.e. their NMSE times
    V_x = E‖x − x̄‖², so the aux term is returned on the same scale: V_x · E‖e − ê‖² / E‖e − ē‖². That keeps
    α = 1/32 meaning what it means in the paper. Zero when no latent is dead.

    ``pre_acts`` [B, d_sae] is the dense pre-activation matrix (gradient flows to the selected entries only)."""
    entries = auxk_entries(pre_acts.detach(), dead_mask, k_aux)
    if entries is None:
        return pre_acts.new_zeros(())
    rows, cols, _ = entries
    return auxk_from_entries(pre_acts[rows, cols], entries, x, x_hat, W_dec)


def compose_loss(out: TrainOutput, penalty, coefficient: float | Tensor) -> LossOutput:
    """loss = E‖x − x̂‖² + Σ aux + λ·P(sparsity input)."""
    sparsity = torch.as_tensor(penalty(out.sparsity), dtype=out.mse.dtype, device=out.mse.device)
    loss = out.mse + coefficient * sparsity
    for term in out.aux.values():
        loss = loss + term
    terms = {"mse_loss": out.mse.detach(), "sparsity_loss": sparsity.detach(),
             **{k: v.detach() for k, v in out.aux.items()}, **out.logs}
    return LossOutput(loss, out.f, terms)
