"""Where a saved dictionary reads and writes, for the commands that read its features (scan, logit lens,
dashboard, steering).

A plain SAE reads and writes one hook point. A transcoder (``layout = "pair"``) reads one site and writes another
at the same layer — its cfg.json's ``hook_name``/``site`` are the input (e.g. ``blocks.6.ln2.hook_normalized``,
mlp_in) and ``hook_name_out``/``site_out`` the output (``blocks.6.hook_mlp_out``): its latents are computed from
the input site's activations, its decoder rows W_dec [d_sae, d_out] live in the output site (mlp_out writes into the
residual stream, so W_U · W_dec,i is a logit lens), and steering edits the output site. A crosscoder
(``layout = "layers"``) is not served yet: :func:`dictionary_points` refuses it with a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saefw.errors import SaefwError
from saefw.io.saved import parse_hook_name, read_config
from saefw.lm.model import SITES, hook_name

SUPPORTED = "SAEs on one hook point and transcoders (arch=transcoder, skip_transcoder)"


@dataclass(frozen=True)
class DictionaryPoints:
    """The hook points of a dictionary at ``layer``: it reads ``read_site`` (its latents are a function of it)
    and writes ``write_site`` (its decoder rows are directions there); the same site for a plain SAE."""

    layer: int
    read_site: str
    write_site: str

    @property
    def read(self) -> tuple[int, str]:
        return self.layer, self.read_site

    @property
    def write(self) -> tuple[int, str]:
        return self.layer, self.write_site

    @property
    def is_pair(self) -> bool:
        return self.read_site != self.write_site

    @property
    def read_hook(self) -> str:
        return hook_name(self.layer, self.read_site)

    @property
    def write_hook(self) -> str:
        return hook_name(self.layer, self.write_site)

    def describe(self, read_hook: str | None = None) -> str:
        """``blocks.6.hook_resid_post``, or ``reads blocks.6.ln2.hook_normalized → writes blocks.6.hook_mlp_out``
        (``read_hook``: the input's name as the SAE's file spells it, when it has one)."""
        read_hook = read_hook or self.read_hook
        return f"reads {read_hook} → writes {self.write_hook}" if self.is_pair else read_hook


def _saved_site_out(folder: Path) -> str | None:
    """``site_out`` of a saved transcoder: the metadata's ``site_out``, else parsed from ``hook_name_out``
    (saefw writes both into ``metadata``; SAELens's transcoders have ``hook_name_out``), top level or metadata."""
    cfg = read_config(folder)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    for src in (meta, cfg):
        if src.get("site_out") is not None:
            return str(src["site_out"])
    for src in (meta, cfg):
        if src.get("hook_name_out") is not None:
            return parse_hook_name(str(src["hook_name_out"]))[1]
    return None


def dictionary_points(folder: Path, meta: dict, sae, command: str) -> DictionaryPoints:
    """The points the SAE saved in ``folder`` reads and writes, from its :func:`~saefw.io.saved.sae_metadata`
    ``meta`` (model, layer and site present) and its layout. A clear :class:`SaefwError` for a crosscoder, and
    for a transcoder whose file does not say which site it writes (``command`` names the command refusing)."""
    layers = meta.get("layers")
    if sae.layout == "layers" or (isinstance(layers, list) and len(layers) > 1):
        where = f" at layers {layers}" if layers else ""
        raise SaefwError(f"{folder} holds a crosscoder (it reads and writes {meta['site']}{where} together): "
                         f"{command} does not serve crosscoders yet; it reads {SUPPORTED}")
    layer, site = int(meta["layer"]), str(meta["site"])
    if sae.layout != "pair":
        return DictionaryPoints(layer, site, site)
    site_out = meta.get("site_out") or _saved_site_out(folder)
    if site_out is None:
        raise SaefwError(f"{folder} holds a transcoder but its cfg.json does not say which site it writes "
                         f"(metadata site_out or hook_name_out, e.g. blocks.{layer}.hook_mlp_out)")
    if site_out not in SITES:
        raise SaefwError(f"{folder}: its transcoder writes site_out={site_out!r}, which saefw cannot hook; "
                         f"choices: {', '.join(SITES)}")
    return DictionaryPoints(layer, site, str(site_out))
