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

This module knows SAELens's schema only, never an arch: each arch class carries its own mapping (its
``saelens_architecture``, ``saelens_reads`` and the ``saelens_*`` hooks of :class:`saefw.arch.base.SAE`), so a new
SAELens-compatible arch stays one file.

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
from saefw.registry import entry, names

log = logging.getLogger(__name__)

SCHEMA_VERSION = "6.54.12"
"""The SAELens version whose cfg.json schema we write (SAELens treats files without one as pre-6.0)."""
FORMAT = 2  # metadata.saefw.format; format 1 was the old ``sae.safetensors`` + flat cfg.json
WEIGHTS = "sae_weights.safetensors"

# metadata keys that belong to SAELens or saefw themselves: a source's describe() never writes them
RESERVED_METADATA = ("sae_lens_version", "sae_lens_training_version", "training_architecture",
                     "training_architecture_details", "saefw")

PRE_6_ARCHITECTURE = "standard"
"""What a SAELens cfg.json without an ``architecture`` key means (configs written before SAELens 6.0)."""


def saelens_architecture(sae) -> str | None:
    """The SAELens architecture that computes exactly what ``sae`` computes at inference, or None.

    Read from the class's own body (``saelens_architecture = "topk"``), never inherited: a subclass usually
    changes the maths (a plugin that rescales the decoder is no longer SAELens's ``standard``)."""
    value = vars(type(sae)).get("saelens_architecture")
    # a property when the SAELens equivalent depends on the instance (a transcoder's activation)
    return value.__get__(sae) if isinstance(value, property) else value


def saelens_reads(cls: type) -> tuple[str, ...]:
    """The SAELens architectures arch class ``cls`` imports, from its own body (``saelens_reads = ("topk",)``),
    never inherited, for the same reason as :func:`saelens_architecture`."""
    return tuple(vars(cls).get("saelens_reads", ()))


def _arch_classes() -> dict[str, type]:
    return {name: entry("arch", name).cls for name in names("arch")}


def readable_architectures() -> list[str]:
    """Every SAELens architecture some registered arch reads, sorted."""
    return sorted({a for cls in _arch_classes().values() for a in saelens_reads(cls)})


def readers(architecture: str, own: str | None = None) -> list[type]:
    """The registered arch classes that read SAELens ``architecture``, in the order they are asked: the
    directory's own saefw arch ``own`` first (when it reads it), then by ``saelens_priority`` (highest first) and
    name."""
    classes = _arch_classes()
    found = sorted((name for name, cls in classes.items() if architecture in saelens_reads(cls)),
                   key=lambda name: (name != own, -classes[name].saelens_priority, name))
    return [classes[name] for name in found]


def export_config(sae, provenance: dict | None = None) -> dict:
    """cfg.json for ``sae`` (already folded to ``input_scale`` = 1) in SAELens 6.x's schema.

    ``provenance`` (a source's ``describe()`` plus run facts) goes into ``metadata`` only and can never
    overwrite the SAE's own fields: top-level keys are the SAE's, and a provenance key that names one of
    SAELens's or saefw's own metadata fields is kept under ``source_<key>`` instead. An arch that declares a
    SAELens architecture adds its own fields through :meth:`~saefw.arch.base.SAE.saelens_config` and
    :meth:`~saefw.arch.base.SAE.saelens_metadata`; one that declares none is saved under its
    ``saved_architecture`` (its plugin name unless that would name a different SAELens architecture)."""
    arch = saelens_architecture(sae)
    metadata: dict = {"sae_lens_version": SCHEMA_VERSION, "sae_lens_training_version": None}
    for key, value in (provenance or {}).items():
        if key in RESERVED_METADATA:
            log.warning("provenance key %r names one of the SAE's own fields: saved as source_%s", key, key)
            key = f"source_{key}"
        metadata[key] = value
    if arch is not None:
        metadata.update(sae.saelens_metadata())
    metadata["saefw"] = {"format": FORMAT, "architecture": sae.plugin_name,
                         "arch_config": dataclasses.asdict(sae.cfg)}
    cfg = {"architecture": arch or sae.saved_architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, **sae.shape_config(),
           "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none"}
    cfg.update(sae.saelens_config())  # e.g. a transcoder's apply_b_dec_to_input: false, in either format
    cfg["metadata"] = metadata
    return cfg


def export_tensors(sae, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights file of ``sae`` from its state dict (``input_scale`` dropped): in SAELens form, through the
    arch's :meth:`~saefw.arch.base.SAE.saelens_state`, when the arch declares a SAELens architecture."""
    return sae.saelens_state(dict(state)) if saelens_architecture(sae) is not None else dict(state)


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
    act = activation_of(cfg)
    if act not in (None, "relu", "topk"):
        _refuse(where, "activation_fn", act, "saefw reads ReLU and TopK SAEs")


def saelens_arch_of(cfg: dict) -> str:
    """The SAELens architecture named by ``cfg`` (pre-6.0 configs name none: :data:`PRE_6_ARCHITECTURE`)."""
    return cfg.get("architecture", PRE_6_ARCHITECTURE)


def activation_of(cfg: dict) -> str | None:
    """The activation function a SAELens cfg.json names (6.x: ``activation_fn``; pre-6.0: ``activation_fn_str``)."""
    return cfg.get("activation_fn", cfg.get("activation_fn_str"))


def k_of(cfg: dict) -> float | None:
    """The ``k`` of a top-k style SAELens config, wherever its SAELens version put it (top level, the pre-6.0
    ``activation_fn_kwargs``, or a BatchTopK's ``metadata.training_architecture_details``)."""
    k = cfg.get("k")
    if k is None:
        k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if k is None:
        k = ((cfg.get("metadata") or {}).get("training_architecture_details") or {}).get("k")
    return k


def is_whole(k) -> bool:
    """Whether ``k`` is a finite whole number (an int, or a float such as 32.0)."""
    return isinstance(k, (int, float)) and not isinstance(k, bool) and math.isfinite(k) and float(k).is_integer()


def fold_b_dec_input(cfg: dict, t: dict[str, Tensor], bias: str = "b_enc") -> None:
    """``apply_b_dec_to_input: false``: SAELens's encoder reads x W_enc + b_enc, saefw's (x − b_dec) W_enc + b_enc,
    so the encoder bias absorbs the difference in place: ``t[bias]`` ← ``t[bias]`` + b_dec W_enc."""
    if not cfg.get("apply_b_dec_to_input", True):
        t[bias] += t["b_dec"] @ t["W_enc"]


def fold_decoder_norm_rescale(cfg: dict, t: dict[str, Tensor]) -> None:
    """``rescale_acts_by_decoder_norm``: SAELens selects on z ⊙ ‖W_dec,i‖ and decodes (f / ‖W_dec,i‖) W_dec; with
    n_i = ‖W_dec,i‖ that is W_enc,i ← n_i W_enc,i, b_enc,i ← n_i b_enc,i, W_dec,i ← W_dec,i / n_i exactly."""
    if cfg.get("rescale_acts_by_decoder_norm", False):
        n = t["W_dec"].norm(dim=-1).clamp_min(1e-8)
        t["W_enc"] *= n
        t["b_enc"] *= n
        t["W_dec"] /= n[:, None]


def import_state(cfg: dict, tensors: dict[str, Tensor], where: str) -> tuple[str, dict, dict[str, Tensor]]:
    """(saefw arch name, arch config, state dict) computing what SAELens computes for this directory.

    ``cfg`` is a SAELens 6.x cfg.json (a saefw one included), ``tensors`` its weights file. The registered archs
    that read its SAELens architecture (:func:`readers`) are asked in turn: each renames and checks the tensors
    (:meth:`~saefw.arch.base.SAE.saelens_tensors`, :meth:`~saefw.arch.base.SAE.saelens_tensor_names`), then
    :meth:`~saefw.arch.base.SAE.from_saelens` folds the SAELens options into them exactly and returns the arch
    config, or None to leave the directory to the next reader."""
    check_options(cfg, where)
    arch = saelens_arch_of(cfg)
    own = ((cfg.get("metadata") or {}).get("saefw") or {}).get("architecture")
    classes = readers(arch, own if isinstance(own, str) else None)
    if not classes:
        raise SaefwError(f"{where}: architecture={arch!r} is not supported; saefw reads the SAELens "
                         f"architectures {', '.join(readable_architectures())}")
    for cls in classes:
        named = cls.saelens_tensors(arch, tensors)
        expected = cls.saelens_tensor_names(arch)
        extra, missing = set(named) - expected, expected - set(named)
        if extra or missing:
            raise SaefwError(f"{where}: a SAELens {arch} SAE has tensors {sorted(expected)}; this file "
                             + (f"also has {sorted(extra)}" if extra else "")
                             + (" and " if extra and missing else "")
                             + (f"lacks {sorted(missing)}" if missing else ""))
        t = {k: v.detach().float().clone() for k, v in named.items()}
        arch_config = cls.from_saelens(arch, cfg, t, where)
        if arch_config is not None:
            return cls.plugin_name, arch_config, t
    raise SaefwError(f"{where}: no registered arch reads this SAELens {arch} SAE (asked: "
                     f"{', '.join(cls.plugin_name for cls in classes)})")
