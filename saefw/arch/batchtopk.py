"""BatchTopK SAE (Bussmann et al. 2024): TopK over the whole batch in training, a fixed threshold at inference."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from saefw.arch.jumprelu import threshold_tensors
from saefw.arch.ops import SparseLatents
from saefw.arch.topk import TopKSAE
from saefw.errors import SaefwError
from saefw.io.saelens_format import (
    fold_b_dec_input,
    fold_decoder_norm_rescale,
    is_whole,
    k_of,
)
from saefw.registry import register


@dataclass
class BatchTopKConfig:
    k: int | None = field(default=None, metadata={"help": (
        "mean latents kept per token (k·B per batch of B tokens); null: the run's target_l0")})
    k_aux: int | None = field(default=None, metadata={"help": (
        "dead latents the AuxK loss may use; null: d_in // 2 (Gao et al.)")})
    aux_coefficient: float = field(default=1 / 32, metadata={"help": "α, the AuxK loss's weight (Gao et al.: 1/32)"})
    # before 1/threshold_ema steps the estimate is the plain running mean, so early batches are not swamped by an
    # arbitrary start value
    threshold_ema: float = field(default=0.01, metadata={"help": (
        "weight of the newest batch in the training-time threshold estimate once past 1/threshold_ema steps")})


@register("arch", "batchtopk", BatchTopKConfig)
class BatchTopKSAE(TopKSAE):
    """z = (x − b_dec) W_enc + b_enc;   x̂ = f W_dec + b_dec;
    training (``module.train()``): f = BatchTopK_{k·B}(ReLU(z)), the k·B largest entries of the whole
    [B, d_sae] batch kept and the rest zeroed, so tokens get uneven counts averaging k;
    inference (``module.eval()``): f = ReLU(z) ⊙ 1[z > θ] with one global θ (saved as ``threshold`` [d_sae],
    every entry equal, as SAELens' JumpReLU reads it);
    loss = ‖x − x̂‖² + α·AuxK(z, x − x̂).

    θ is estimated during training as the running mean (then EMA) of the smallest kept positive activation per
    batch (Bussmann et al.), and refit by ``finalize_for_inference``: on the given batches θ is set midway between
    the (k·N)-th and (k·N+1)-th largest positive pre-activation over all N tokens, so the inference rule keeps
    exactly k·N latents there — mean L0 = k on that data, by construction rather than by an estimate.

    Decoder rows are held at unit norm; W_enc is initialised as W_decᵀ (all as in TopKSAE, whose loss it uses)."""

    saelens_architecture = "jumprelu"  # at inference: a JumpReLU with one shared threshold
    # SAELens's training save_model ("batchtopk", topk_threshold) and its inference save (a JumpReLU marked
    # training_architecture batchtopk); asked before jumprelu, which takes any JumpReLU this declines
    saelens_reads = ("batchtopk", "jumprelu")
    saelens_priority = 1

    def __init__(self, cfg: BatchTopKConfig, d_in: int, d_sae: int):
        if not 0 < cfg.threshold_ema <= 1:
            raise SaefwError(f"arch.threshold_ema={cfg.threshold_ema!r} must be in (0, 1]")
        super().__init__(cfg, d_in, d_sae)
        # 0 until the first training batch: an untrained SAE in eval mode is then plain ReLU
        self.register_buffer("threshold", torch.zeros(d_sae))
        # batches averaged into θ so far (not saved: only steers the running mean); a tensor on θ's device, so
        # counting needs no host synchronisation
        self._threshold_updates = torch.zeros((), dtype=torch.long)

    def saelens_config(self) -> dict:
        return {}  # a JumpReLU has no k: it rides in the metadata

    def saelens_metadata(self) -> dict:
        # SAELens's own convention for a BatchTopK SAE saved for inference (a JumpReLU with one threshold)
        return {"training_architecture": "batchtopk", "training_architecture_details": {"k": self.k}}

    @classmethod
    def saelens_tensors(cls, architecture, tensors):
        return threshold_tensors(tensors) if architecture == "jumprelu" else tensors

    @classmethod
    def saelens_tensor_names(cls, architecture: str) -> set[str]:
        return {"W_enc", "W_dec", "b_enc", "b_dec", "topk_threshold" if architecture == "batchtopk" else "threshold"}

    @classmethod
    def from_saelens(cls, architecture, cfg, t, where):
        """``{"k": k}`` for SAELens's BatchTopK saves; a JumpReLU is one only when its metadata says so, its k is
        a whole number of latents and its thresholds are all equal (else None: it is a plain JumpReLU)."""
        meta = cfg.get("metadata") or {}
        if architecture != "batchtopk" and meta.get("training_architecture") != "batchtopk":
            return None
        if architecture == "batchtopk":  # a training checkpoint: rescaled like topk, one running threshold
            fold_decoder_norm_rescale(cfg, t)
        fold_b_dec_input(cfg, t)
        if architecture == "batchtopk":
            t["threshold"] = t.pop("topk_threshold").reshape(()).expand(t["b_enc"].shape).clone()
        k, th = k_of(cfg), t["threshold"]
        if not (is_whole(k) and 1 <= k <= cfg["d_sae"] and bool((th == th[0]).all())):
            return None
        return {"k": int(k)}

    @property
    def threshold_updates(self) -> int:
        return int(self._threshold_updates)

    def batch_topk(self, z: Tensor) -> Tensor:
        """Keep the k·B largest entries of ReLU(z) [B, d_sae] over the whole batch, zero the rest."""
        acts = torch.relu(z)
        flat = acts.reshape(-1)
        n_keep = min(self.k * acts.shape[0], flat.numel())
        vals, idx = flat.topk(n_keep, sorted=False)
        return torch.zeros_like(flat).scatter(0, idx, vals).view_as(acts)

    def threshold_acts(self, z: Tensor) -> Tensor:
        return torch.relu(z) * (z > self.threshold).to(z.dtype)

    def _encode(self, x: Tensor) -> Tensor:
        z = self.pre_acts(x)
        return self.batch_topk(z) if self.training else self.threshold_acts(z)

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        """Move θ towards the smallest positive entry of ``kept`` (the batch's kept activations); no change when
        none is positive. Runs on the device, without a host synchronisation."""
        smallest = torch.where(kept > 0, kept, torch.inf).amin().to(self.threshold.dtype)
        any_kept = torch.isfinite(smallest)
        n = self._threshold_updates.to(self.threshold.device) + any_kept.long()
        self._threshold_updates = n
        rate = (1.0 / n.clamp_min(1).float()).clamp_min(self.cfg.threshold_ema)
        self.threshold.copy_(torch.where(any_kept, torch.lerp(self.threshold, smallest.expand_as(self.threshold),
                                                              rate), self.threshold))

    def train_acts(self, z: Tensor) -> Tensor:
        f = self.batch_topk(z)
        self._update_threshold(f.detach().reshape(-1))
        return f

    def select(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The k·B largest entries of ReLU(z) over the batch, as (rows, cols) sorted by position."""
        flat = torch.relu(z).reshape(-1)
        n_keep = min(self.k * z.shape[0], flat.numel())
        idx = flat.topk(n_keep, sorted=False).indices.sort().values
        return idx // z.shape[1], idx % z.shape[1]

    def after_select(self, f: SparseLatents) -> None:
        self._update_threshold(f.values.detach())

    @torch.no_grad()
    def finalize_for_inference(self, batches) -> None:
        """Refit θ on ``batches`` (scaled activations [B, d_in]) so that the inference rule's mean L0 is k there.

        The k·N largest positive pre-activations over all N tokens are the ones to keep; only a running top-(k·N)
        candidate set is held (so memory is O(k·N), not O(N·d_sae)). With no batches, the training estimate stays."""
        batches = [b for b in batches if b.numel()]
        if not batches:
            return
        device = self.W_enc.device
        n_keep = self.k * sum(len(b) for b in batches) + 1  # one more: θ goes between the last kept and the next
        top = torch.empty(0, device=device)
        for b in batches:
            z = torch.relu(self.pre_acts(b.to(device, self.W_enc.dtype))).float().reshape(-1)
            top = torch.cat([top, z.topk(min(n_keep, z.numel())).values])
            top = top.topk(min(n_keep, top.numel())).values
        if top.numel() < n_keep:  # fewer candidates than k·N + 1 at all (tiny d_sae): keep every positive one
            theta = 0.0
        else:
            last_kept, first_dropped = top[-2].item(), top[-1].item()
            theta = (last_kept + first_dropped) / 2  # strict z > θ keeps last_kept, drops first_dropped
        self.threshold.fill_(theta)
