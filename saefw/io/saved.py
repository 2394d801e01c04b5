"""Saving and loading SAEs. Never pickle.

A saved SAE directory is also a SAELens 6.x SAE directory: ``sae_weights.safetensors`` (SAELens tensor names)
+ ``cfg.json`` in SAELens's schema with saefw's own fields in ``metadata.saefw`` (see
:mod:`saefw.io.saelens_format`). :func:`load_sae` reads three kinds of directory: saefw's, SAELens's (what its
``save_model`` writes) and saefw's format-1 directories (``sae.safetensors`` + a flat cfg.json)."""
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from saefw.app.atomic import atomic_path, write_json
from saefw.errors import SaefwError
from saefw.io import saelens_format
from saefw.registry import build, discover, entry, names

log = logging.getLogger(__name__)

WEIGHTS, CONFIG = saelens_format.WEIGHTS, "cfg.json"
LEGACY_WEIGHTS = "sae.safetensors"  # format 1 (saefw before the SAELens layout)

_HOOK = re.compile(r"^blocks\.(\d+)\.(?:hook_(resid_pre|resid_post|mlp_out|attn_out)$|(ln2\.hook_normalized)$)?")


def fold_input_scale(sae):
    """A copy of ``sae`` that takes raw activations with ``input_scale`` = 1, the scale folded into its weights by
    the arch's own :meth:`~saefw.arch.base.SAE.fold_input_scale` (W_enc·s, W_dec/s, b_dec/s unless it says
    otherwise)."""
    sae = copy.deepcopy(sae)
    with torch.no_grad():
        sae.fold_input_scale(sae.input_scale.item())
        sae.input_scale.fill_(1.0)
    return sae


def save_sae(sae, folder: Path, provenance: dict | None = None) -> None:
    """Write ``sae`` to ``folder`` as a SAELens-loadable directory (weights first, then cfg.json).

    ``provenance`` (the source's ``describe()`` and run facts) is recorded in ``metadata`` and never overwrites
    the SAE's own fields."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    folded = fold_input_scale(sae)
    state = {k: v.detach().float().cpu().contiguous() for k, v in folded.state_dict().items()
             if k not in folded.scale_buffers}
    tensors = {k: v.contiguous() for k, v in saelens_format.export_tensors(folded, state).items()}
    cfg = saelens_format.export_config(folded, provenance)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / CONFIG, cfg)


def read_config(folder: Path) -> dict:
    """cfg.json of a saved SAE directory, with clear errors for a missing or corrupt file."""
    path = Path(folder) / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise SaefwError(f"no {CONFIG} in {folder}: not a saved SAE directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaefwError(f"{path} is corrupt: {exc}") from None
    if not isinstance(cfg, dict):
        raise SaefwError(f"{path} is corrupt: not a JSON object")
    return cfg


def saved_run_config(folder: Path) -> dict | None:
    """The whole (resolved) config a saefw training run saved beside its SAE (``config.yaml``), or None where the
    directory has none (a SAELens directory) or it cannot be read (with a warning): what ``saefw.evaluate``
    takes the run's source and evaluators from."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # noqa: BLE001 - YAML and OmegaConf raise several types for a garbled file
        log.warning("%s cannot be read (%s): the run's saved settings are not used", path, exc)
        return None
    return cfg if isinstance(cfg, dict) else None


def is_legacy(cfg: dict) -> bool:
    """saefw format 1: a flat cfg.json with ``arch_config`` and no SAELens ``metadata`` block."""
    return "arch_config" in cfg and "metadata" not in cfg


def _read_tensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises several types for truncated/garbled files
        raise SaefwError(f"{path} is missing or corrupt: {exc}") from None


def _resolve_arch(cfg: dict, where: Path, tensors: dict) -> tuple[str, dict, dict]:
    """(arch, arch config, state dict) for a format-2 or SAELens cfg.json."""
    own = (cfg.get("metadata") or {}).get("saefw")
    sl_arch = saelens_format.saelens_arch_of(cfg)
    readable = sl_arch in saelens_format.readable_architectures()
    if readable:
        name, arch_config, tensors = saelens_format.import_state(cfg, tensors, str(where))
    elif not isinstance(own, dict):
        raise SaefwError(f"{where}: architecture={sl_arch!r} is not supported; saefw reads the SAELens "
                         f"architectures {', '.join(saelens_format.readable_architectures())}")
    if isinstance(own, dict):
        own_name = own.get("architecture")
        if own_name in names("arch"):
            return own_name, own.get("arch_config") or {}, tensors
        if not readable:
            raise SaefwError(f"{where}: arch={own_name!r} is not registered (its plugin must be in ./plugins or "
                             f"an installed package); registered: {', '.join(names('arch'))}")
        log.warning("%s: arch %r is not registered (is its plugin in ./plugins?); loading it as SAELens's %s, "
                    "which computes the same latents at inference", where, own_name, sl_arch)
    return name, arch_config, tensors


def load_sae(folder: Path, device: str = "cpu"):
    """Rebuild the SAE saved in ``folder`` (saefw, SAELens or saefw format-1 directory) through the registry,
    in eval mode on ``device``; clear errors for missing, corrupt or unsupported files."""
    folder = Path(folder)
    cfg = read_config(folder)
    discover()
    try:
        if is_legacy(cfg):
            arch, arch_config = cfg["architecture"], cfg.get("arch_config") or {}
            tensors = _read_tensors(folder / LEGACY_WEIGHTS, device)
        else:
            arch, arch_config, tensors = _resolve_arch(cfg, folder, _read_tensors(folder / WEIGHTS, device))
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
        shape = entry("arch", arch).cls.shape_kwargs(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise SaefwError(f"{folder / CONFIG} is corrupt: {exc!r}") from None
    sae = build("arch", arch_config, name=arch, d_in=d_in, d_sae=d_sae, **shape)
    expected = set(sae.state_dict()) - set(sae.scale_buffers)
    missing, extra = expected - set(tensors), set(tensors) - expected
    if missing or extra:
        raise SaefwError(f"{folder}: the weights do not fit arch={arch}: "
                         + "; ".join(s for s in (f"missing {sorted(missing)}" if missing else "",
                                                 f"unexpected {sorted(extra)}" if extra else "") if s))
    try:
        sae.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise SaefwError(f"{folder}: the weights do not fit arch={arch} with d_in={d_in}, d_sae={d_sae}: "
                         f"{str(exc).splitlines()[-1].strip()}") from None
    return sae.to(device).eval()


def parse_hook_name(hook_name: str | None) -> tuple[int | None, str | None]:
    """(layer, site) of a TransformerLens-style hook name: ``blocks.6.hook_resid_post`` → (6, "resid_post");
    a hook inside a block that saefw cannot hook (``blocks.6.attn.hook_z``) gives (6, None)."""
    m = _HOOK.match(hook_name or "")
    if not m:
        return None, None
    return int(m.group(1)), "mlp_in" if m.group(3) else m.group(2)


def sae_metadata(folder: Path) -> dict:
    """Where the SAE saved in ``folder`` reads its activations, in saefw's names: ``model``, ``layer``, ``site``,
    ``hook_name``, ``context_size``, ``corpus``, ``prepend_bos`` (None where the file does not say), and
    ``penalty`` and ``source`` (saefw runs only, where recorded), ``site_out`` (a transcoder: the site it writes;
    ``site`` is the one it reads) and ``layers`` (a crosscoder's). Works for saefw (both formats) and SAELens directories; layer and site
    come from the hook name when the file has no explicit field."""
    cfg = read_config(folder)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}

    def pick(*keys):
        for key in keys:
            for src in (meta, cfg):
                if src.get(key) is not None:
                    return src[key]
        return None

    hook = pick("hook_name", "hook_point")  # hook_point: SAELens before 6.0
    layer, site = parse_hook_name(hook)
    explicit_layer = pick("hook_layer", "hook_point_layer")
    return {"model": pick("model_name"), "layer": explicit_layer if explicit_layer is not None else layer,
            "site": pick("site") or site, "hook_name": hook, "context_size": pick("context_size"),
            "corpus": pick("dataset_path"), "prepend_bos": pick("prepend_bos"), "penalty": pick("penalty"),
            "source": pick("source"), "site_out": pick("site_out"), "layers": pick("layers")}


def hooked_sae_metadata(folder: Path, label: str) -> dict:
    """:func:`sae_metadata` of a saved SAE directory that must say which model, layer and site it reads
    (``label`` names the option that gave the folder, for the error)."""
    if not folder.is_dir():
        raise SaefwError(f"{label}={str(folder)!r} is not a directory")
    meta = sae_metadata(folder)
    missing = [k for k in ("model", "layer", "site") if meta.get(k) is None]
    if missing:
        raise SaefwError(f"{folder} does not say which {', '.join(missing)} its SAE reads")
    return meta
