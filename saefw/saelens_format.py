"""The SAELens 6.x SAE directory format (``sae_weights.safetensors`` + ``cfg.json``), both ways.

Export: :func:`export_config` writes a saefw SAE's ``cfg.json`` in SAELens's schema, so ``SAE.load_from_disk``
(and SAEBench, SAEDashboard, Neuronpedia, which read SAEs through it) computes the same latents. saefw's own
fields ride along inside SAELens's free-form ``metadata`` block, which SAELens keeps when it re-saves an SAE::

    {"architecture": "topk", "d_in": 576, "d_sae": 4608, "k": 32, ..., "metadata": {
        "sae_lens_version": "6.54.12", "model_name": ..., "hook_name": "blocks.6.hook_resid_post", ...,
        "saefw": {"format": 2, "architecture": "topk", "arch_config": {"k": 32, ...}}}}

Import: :func:`import_state` turns a SAELens directory (what ``save_model`` or ``save_inference_model`` writes)
into a saefw arch name, arch config and state dict with identical encode/decode. SAELens options are either
folded exactly into the weights (``apply_b_dec_to_input: false``, topk's ``rescale_acts_by_decoder_norm``) or
refused with a :class:`SaefwError` naming the option (run-time normalisations, hook_z reshaping).

Both sides apply ReLU after the top-k selection and fire a threshold latent only for z > θ (strictly). The one
difference left is measure-zero: pre-activations exactly tied at the k-th value may be broken differently
(torch.topk's choice, sorted in saefw and unsorted in SAELens).
"""
from __future__ import annotations

import dataclasses
import logging
import math

from torch import Tensor

from saefw.errors import SaefwError

log = logging.getLogger(__name__)

SCHEMA_VERSION = "6.54.12"
"""The SAELens version whose cfg.json schema we write (SAELens treats files without one as pre-6.0)."""
FORMAT = 2  # metadata.saefw.format; format 1 was the old ``sae.safetensors`` + flat cfg.json
WEIGHTS = "sae_weights.safetensors"

# metadata keys that belong to SAELens or saefw themselves: a source's describe() never writes them
RESERVED_METADATA = ("sae_lens_version", "sae_lens_training_version", "training_architecture",
                     "training_architecture_details", "saefw")

# SAELens architecture -> the saefw arch computing the same inference function
IMPORTED = {"standard": "l1", "gated": "gated", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}
_TENSORS = {
    "standard": {"W_enc", "W_dec", "b_enc", "b_dec"},
    "topk": {"W_enc", "W_dec", "b_enc", "b_dec"},
    "gated": {"W_enc", "W_dec", "b_gate", "r_mag", "b_mag", "b_dec"},
    "jumprelu": {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"},
    "batchtopk": {"W_enc", "W_dec", "b_enc", "b_dec", "topk_threshold"},  # SAELens's training save_model
}


def saelens_architecture(sae) -> str | None:
    """The SAELens architecture that computes exactly what ``sae`` computes at inference, or None.

    Read from the class's own body (``saelens_architecture = "topk"``), never inherited: a subclass usually
    changes the maths (a plugin that rescales the decoder is no longer SAELens's ``standard``)."""
    return vars(type(sae)).get("saelens_architecture")


def export_config(sae, provenance: dict | None = None) -> dict:
    """cfg.json for ``sae`` (already folded to ``input_scale`` = 1) in SAELens 6.x's schema.

    ``provenance`` (a source's ``describe()`` plus run facts) goes into ``metadata`` only and can never
    overwrite the SAE's own fields: top-level keys are the SAE's, and a provenance key that names one of
    SAELens's or saefw's own metadata fields is kept under ``source_<key>`` instead."""
    from saefw.arch.batchtopk import BatchTopKSAE
    from saefw.arch.topk import TopKSAE

    arch = saelens_architecture(sae)
    metadata: dict = {"sae_lens_version": SCHEMA_VERSION, "sae_lens_training_version": None}
    for key, value in (provenance or {}).items():
        if key in RESERVED_METADATA:
            log.warning("provenance key %r names one of the SAE's own fields: saved as source_%s", key, key)
            key = f"source_{key}"
        metadata[key] = value
    if isinstance(sae, BatchTopKSAE) and arch == "jumprelu":
        # SAELens's own convention for a BatchTopK SAE saved for inference (a JumpReLU with one threshold)
        metadata["training_architecture"] = "batchtopk"
        metadata["training_architecture_details"] = {"k": sae.k}
    metadata["saefw"] = {"format": FORMAT, "architecture": sae.plugin_name,
                         "arch_config": dataclasses.asdict(sae.cfg)}
    cfg = {"architecture": arch or sae.plugin_name, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none"}
    if arch == "topk" and isinstance(sae, TopKSAE):
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    cfg["metadata"] = metadata
    return cfg


def _refuse(where: str, option: str, value, why: str) -> None:
    raise SaefwError(f"{where}: {option}={value!r} is not supported: {why}")


def check_options(cfg: dict, where: str) -> None:
    """Refuse the SAELens options saefw cannot reproduce exactly (each names its value and what to do)."""
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, False, "none"):
        _refuse(where, "normalize_activations", "expected_average_only_in" if norm is True else norm,
                "saefw reproduces only 'none'; fold the normalisation into the weights first (SAELens: "
                "fold_activation_norm_scaling_factor / fold_activation_whitening) and save again")
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in (None, "none"):
        _refuse(where, "reshape_activations", reshape,
                "saefw hooks whole-vector sites (resid_pre, resid_post, mlp_out, attn_out), not per-head hook_z")
    if cfg.get("finetuning_scaling_factor"):
        _refuse(where, "finetuning_scaling_factor", cfg["finetuning_scaling_factor"],
                "fold the scaling factor into W_dec and save again")
    act = cfg.get("activation_fn", cfg.get("activation_fn_str"))  # pre-6.0 configs
    if act not in (None, "relu", "topk"):
        _refuse(where, "activation_fn", act, "saefw reads ReLU and TopK SAEs")


def saelens_arch_of(cfg: dict) -> str:
    """The SAELens architecture of ``cfg`` (pre-6.0 configs: ``standard`` unless their activation is topk)."""
    arch = cfg.get("architecture", "standard")
    if arch == "standard" and cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk":
        return "topk"
    return arch


def _k_of(cfg: dict, meta: dict) -> float | None:
    k = cfg.get("k")
    if k is None:
        k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if k is None:
        k = (meta.get("training_architecture_details") or {}).get("k")
    return k


def _integral(k) -> bool:
    return isinstance(k, (int, float)) and not isinstance(k, bool) and math.isfinite(k) and float(k).is_integer()


def import_state(cfg: dict, tensors: dict[str, Tensor], where: str) -> tuple[str, dict, dict[str, Tensor]]:
    """(saefw arch name, arch config, state dict) computing what SAELens computes for this directory.

    ``cfg`` is a SAELens 6.x cfg.json (a saefw one included), ``tensors`` its weights file. SAELens's
    encoder reads ``(x − b_dec·apply_b_dec_to_input) W_enc + b_enc``; saefw's always subtracts b_dec, so with
    ``apply_b_dec_to_input: false`` the encoder biases absorb it: b_enc ← b_enc + b_dec W_enc (gated: b_gate
    likewise, b_mag ← b_mag + b_dec (W_enc ⊙ exp(r_mag))). TopK with ``rescale_acts_by_decoder_norm`` selects on
    z ⊙ ‖W_dec,i‖ and decodes (f / ‖W_dec,i‖) W_dec; with n_i = ‖W_dec,i‖ that is W_enc,i ← n_i W_enc,i,
    b_enc,i ← n_i b_enc,i, W_dec,i ← W_dec,i / n_i exactly."""
    check_options(cfg, where)
    meta = cfg.get("metadata") or {}
    arch = saelens_arch_of(cfg)
    if arch not in IMPORTED:
        raise SaefwError(f"{where}: architecture={arch!r} is not supported; saefw reads the SAELens "
                         f"architectures {', '.join(IMPORTED)}")
    expected = _TENSORS[arch]
    if arch == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors = {**tensors, "threshold": tensors["log_threshold"].exp()}  # older SAELens checkpoints
        del tensors["log_threshold"]
    extra, missing = set(tensors) - expected, expected - set(tensors)
    if extra or missing:
        raise SaefwError(f"{where}: a SAELens {arch} SAE has tensors {sorted(expected)}; this file "
                         + (f"also has {sorted(extra)}" if extra else "") + (" and " if extra and missing else "")
                         + (f"lacks {sorted(missing)}" if missing else ""))
    t = {k: v.detach().float().clone() for k, v in tensors.items()}

    if arch in ("topk", "batchtopk") and cfg.get("rescale_acts_by_decoder_norm", False):
        n = t["W_dec"].norm(dim=-1).clamp_min(1e-8)
        t["W_enc"] *= n
        t["b_enc"] *= n
        t["W_dec"] /= n[:, None]
    if not cfg.get("apply_b_dec_to_input", True):
        shift = t["b_dec"] @ t["W_enc"]
        if arch == "gated":
            t["b_gate"] += shift
            t["b_mag"] += t["b_dec"] @ (t["W_enc"] * t["r_mag"].exp())
        else:
            t["b_enc"] += shift
    if arch == "batchtopk":  # a training checkpoint: SAELens infers with its running threshold, as a JumpReLU
        t["threshold"] = t.pop("topk_threshold").reshape(()).expand(t["b_enc"].shape).clone()

    name, arch_config = IMPORTED[arch], {}
    k = _k_of(cfg, meta)
    if arch == "topk":
        if not _integral(k):
            raise SaefwError(f"{where}: k={k!r} is not a whole number of latents for a topk SAE")
        arch_config = {"k": int(k)}
    elif arch in ("jumprelu", "batchtopk"):
        # BatchTopK SAEs are saved for inference as JumpReLU SAEs with one shared threshold
        batchtopk = arch == "batchtopk" or meta.get("training_architecture") == "batchtopk"
        th = t["threshold"]
        if batchtopk and _integral(k) and 1 <= k <= cfg["d_sae"] and bool((th == th[0]).all()):
            name, arch_config = "batchtopk", {"k": int(k)}
        else:
            name = "jumprelu"
    return name, arch_config, t
