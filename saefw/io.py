"""Saving and loading SAEs: ``sae.safetensors`` (SAELens tensor names) + ``cfg.json``. Never pickle."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saefw.errors import SaefwError
from saefw.registry import build, discover

WEIGHTS, CONFIG = "sae.safetensors", "cfg.json"


def fold_input_scale(sae):
    """A copy of ``sae`` that takes raw activations with ``input_scale`` = 1, the scale folded into weights:
    W_enc·s, W_dec/s, b_dec/s (exact for every arch whose encoder reads W_enc(x − b_dec))."""
    sae = copy.deepcopy(sae)
    s = sae.input_scale.item()
    with torch.no_grad():
        sae.W_enc.mul_(s)
        sae.W_dec.div_(s)
        sae.b_dec.div_(s)
        sae.input_scale.fill_(1.0)
    return sae


def save_sae(sae, folder: Path, provenance: dict | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    folded = fold_input_scale(sae)
    tensors = {k: v.detach().cpu().contiguous() for k, v in folded.state_dict().items() if k != "input_scale"}
    cfg = {"architecture": sae.plugin_name, "d_in": sae.d_in, "d_sae": sae.d_sae,
           "arch_config": {k: v for k, v in vars(sae.cfg).items()}, "dtype": "float32",
           "normalize_activations": "none", **(provenance or {})}
    tmp = folder / (WEIGHTS + ".partial")
    save_file(tensors, str(tmp))
    tmp.replace(folder / WEIGHTS)  # atomic, so an interruption never leaves a truncated file
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2, default=str))


def load_sae(folder: Path, device: str = "cpu"):
    """Rebuild the SAE saved in ``folder`` through the registry; clear errors for missing or corrupt files."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / CONFIG).read_text())
        arch = cfg["architecture"]
    except FileNotFoundError:
        raise SaefwError(f"no {CONFIG} in {folder}: not a saved SAE directory") from None
    except (json.JSONDecodeError, KeyError) as exc:
        raise SaefwError(f"{folder / CONFIG} is corrupt: {exc}") from None
    discover()
    sae = build("arch", cfg.get("arch_config", {}), name=arch, d_in=cfg["d_in"], d_sae=cfg["d_sae"])
    try:
        tensors = load_file(str(folder / WEIGHTS), device=device)
    except Exception as exc:  # safetensors raises several types for truncated/garbled files
        raise SaefwError(f"{folder / WEIGHTS} is missing or corrupt: {exc}") from None
    missing = set(sae.state_dict()) - set(tensors) - {"input_scale"}
    if missing:
        raise SaefwError(f"{folder / WEIGHTS} lacks tensors {sorted(missing)} for arch={arch}")
    sae.load_state_dict(tensors, strict=False)
    return sae.to(device).eval()


def sae_metadata(folder: Path) -> dict:
    """Where the SAE saved in ``folder`` reads its activations, in saefw's names: ``model``, ``layer``, ``site``,
    ``hook_name``, ``context_size``, ``corpus``, ``prepend_bos`` (None where the file does not say)."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise SaefwError(f"no {CONFIG} in {folder}: not a saved SAE directory") from None
    except json.JSONDecodeError as exc:
        raise SaefwError(f"{folder / CONFIG} is corrupt: {exc}") from None
    names = {"model": ("model", "model_name"), "layer": ("layer", "hook_layer"), "site": ("site",),
             "hook_name": ("hook_name",), "context_size": ("context_size",), "corpus": ("corpus", "dataset_path"),
             "prepend_bos": ("prepend_bos",)}
    return {ours: next((cfg[k] for k in keys if k in cfg), None) for ours, keys in names.items()}
