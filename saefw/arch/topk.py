"""TopK SAE (Gao et al. 2024): sparsity set directly by keeping the k largest latents, no penalty needed."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from saefw.arch.base import (
    SAE,
    SparsityInput,
    TrainOutput,
    auxk_entries,
    auxk_from_entries,
    auxk_loss,
)
from saefw.arch.ops import SparseLatents, gather_pre_acts, row_entries, sparse_decode
from saefw.errors import SaefwError
from saefw.io.saelens_format import (
    activation_of,
    fold_b_dec_input,
    fold_decoder_norm_rescale,
    is_whole,
    k_of,
)
from saefw.registry import register


@dataclass
class TopKConfig:
    k: int | None = field(default=None, metadata={"help": (
        "latents kept per token; null: the run's target_l0 (see saefw/training/run.py sparsity_target)")})
    k_aux: int | None = field(default=None, metadata={"help": (
        "dead latents the AuxK loss may use; null: d_in // 2 (Gao et al.)")})
    aux_coefficient: float = field(default=1 / 32, metadata={"help": "α, the AuxK loss's weight (Gao et al.: 1/32)"})


def resolve_k(arch: str, k, k_aux, d_in: int, d_sae: int) -> tuple[int, int]:
    """Validated (k, k_aux) for the top-k archs; k_aux defaults to d_in // 2 (Gao et al.)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_sae:
        raise SaefwError(f"arch.k={k!r} is invalid for {arch}: it must be an integer in [1, d_sae={d_sae}] "
                         f"(null: the run's target_l0)")
    if k_aux is not None and (not isinstance(k_aux, int) or k_aux < 1):
        raise SaefwError(f"arch.k_aux={k_aux!r} is invalid for {arch}: it must be a positive integer or null")
    return k, k_aux if k_aux is not None else max(1, d_in // 2)


# The sparse training path wins over dense matmuls on a CPU while a token keeps at most this fraction of the
# latents (measured on a 2-core CPU at d_in 576 × d_sae 4,608 and 768 × 16,384: benchmarks/results/performance.md).
# On a GPU the dense matmuls win (H200, k 32, batch 4,096: dense 1.3x faster in fp32 and 1.7x in bf16 at 576 × 4,608,
# equal or 1.6x at 768 × 16,128: benchmarks/results/topk_sparse_vs_dense_h200.jsonl), so only the CPU takes it.
SPARSE_MAX_DENSITY = 1 / 8


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in vars(c))


@register("arch", "topk", TopKConfig)
class TopKSAE(SAE):
    """z = (x − b_dec) W_enc + b_enc;   f = ReLU(TopK_k(z))   (the k largest z_i per token kept, the rest 0);
    x̂ = f W_dec + b_dec;
    loss = ‖x − x̂‖² + α·AuxK(z, x − x̂)   (AuxK: the residual reconstructed from the top-k_aux dead latents).

    Decoder rows are held at unit norm; W_enc is initialised as W_decᵀ. ``k`` is saved in the config."""

    saelens_architecture = "topk"
    # SAELens before 6.0 wrote a TopK SAE as "standard" with activation_fn topk: asked before l1, declined otherwise
    saelens_reads = ("topk", "standard")
    saelens_priority = 1

    default_penalty = "none"
    allowed_penalties = ("none",)
    unit_norm_decoder = True

    def __init__(self, cfg: TopKConfig, d_in: int, d_sae: int):
        super().__init__(cfg, d_in, d_sae)
        self.k, self.k_aux = resolve_k(self.plugin_name, cfg.k, cfg.k_aux, d_in, d_sae)
        self.init_tied_weights(1.0)

    def saelens_config(self) -> dict:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def from_saelens(cls, architecture, cfg, t, where):
        """``{"k": k}``; ``rescale_acts_by_decoder_norm`` and ``apply_b_dec_to_input: false`` folded exactly into
        the weights. A pre-6.0 ``standard`` config is read only when its activation is topk."""
        if architecture != "topk" and activation_of(cfg) != "topk":
            return None
        fold_decoder_norm_rescale(cfg, t)
        fold_b_dec_input(cfg, t)
        k = k_of(cfg)
        if not is_whole(k):
            raise SaefwError(f"{where}: k={k!r} is not a whole number of latents for a topk SAE")
        return {"k": int(k)}

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

    def select(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, cols) of the latents :meth:`train_acts` keeps (before its ReLU), grouped by row."""
        return row_entries(z.topk(self.k, dim=-1).indices)

    def after_select(self, f: SparseLatents) -> None:
        """Called with the training latents of the sparse path (BatchTopK updates its threshold here)."""

    def uses_sparse_path(self, x: Tensor) -> bool:
        """The sparse path computes what :meth:`dense_train_forward` computes (tests/arch/test_fast_paths.py), for
        less on a CPU while k is small against d_sae; a subclass that redefines :meth:`train_acts` without its own
        :meth:`select` gets the dense path, as does an input that needs its own gradient."""
        cls = type(self)
        return (x.device.type == "cpu" and self.k <= SPARSE_MAX_DENSITY * self.d_sae and not x.requires_grad
                and _owner(cls, "train_acts") is _owner(cls, "select"))

    def train_forward(self, x, dead_mask=None) -> TrainOutput:
        if not self.uses_sparse_path(x):
            return self.dense_train_forward(x, dead_mask)
        B = x.shape[0]
        with torch.no_grad():
            centred = x - self.b_dec
            z = torch.addmm(self.b_enc, centred, self.W_enc)
            rows, cols = self.select(z)
            aux = auxk_entries(z, dead_mask, self.k_aux)
        n = len(rows)
        if aux is not None:
            pre = gather_pre_acts(z, centred, self.W_enc, self.b_enc, self.b_dec, torch.cat([rows, aux[0]]),
                                  torch.cat([cols, aux[1]]))
        else:
            pre = gather_pre_acts(z, centred, self.W_enc, self.b_enc, self.b_dec, rows, cols)
        f = SparseLatents(torch.relu(pre[:n]), rows, cols, (B, self.d_sae))
        self.after_select(f)
        x_hat = sparse_decode(f, self.W_dec).to(x.dtype) + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        aux_loss = (auxk_from_entries(pre[n:], aux, x, x_hat, self.W_dec) if aux is not None
                    else mse.new_zeros(()))
        return TrainOutput(f, mse, SparsityInput(acts=f, W_dec=self.W_dec),
                           {"aux_loss": self.cfg.aux_coefficient * aux_loss})

    def dense_train_forward(self, x, dead_mask=None) -> TrainOutput:
        """The reference: dense pre-activations, ``train_acts``, a dense decode and :func:`auxk_loss`."""
        z = self.pre_acts(x)
        f = self.train_acts(z)
        x_hat = self._decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        aux = self.cfg.aux_coefficient * auxk_loss(z, x, x_hat, self.W_dec, dead_mask, self.k_aux)
        return TrainOutput(f, mse, SparsityInput(acts=f, W_dec=self.W_dec), {"aux_loss": aux})
