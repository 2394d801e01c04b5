"""Per-layer decoder-norm profile of a crosscoder's latents (Lindsey et al. 2024, "relative decoder norms").

A crosscoder latent i has a decoder segment at every layer l; n_i^l = ‖W_dec,i^l‖ (raw activation units, from the
SAE's ``layer_norms()``) says how much it writes there. Its share at layer l is n_i^l / Σ_l n_i^l; a latent is
``shared`` when no layer holds more than ``shared_above`` (0.6) of its Σ_l n_i^l, else it belongs to its largest
layer (a latent with no decoder at all is ``zero``).

:func:`write_layer_profile` writes into ``out_dir``:

* ``layer_profile.csv``: per latent, ``latent``, ``norm_L<layer>`` and ``fraction_L<layer>`` for each layer (the
  model's layer numbers), ``top_layer`` (the layer with the largest share), ``top_share``, ``class`` (``shared``,
  ``L<layer>`` or ``zero``);
* ``layer_profile.json``: the summary (``format`` ``saefw.layer_profile/1``, ``layers``, ``shared_above``,
  ``n_latents``, ``counts`` per class, ``median_top_share``);
* ``layer_profile.png``: the histogram of each latent's relative norm at the last layer against the first,
  n^last / (n^first + n^last) (Lindsey et al.'s figure: 0 = first layer only, 1 = last layer only), beside a
  heatmap of the per-layer shares of all latents sorted by their largest layer and share.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import torch

from saefw.app.atomic import write_json, write_text
from saefw.errors import SaefwError
from saefw.relations.graph import save_png

FORMAT = "saefw.layer_profile/1"
SHARED_ABOVE = 0.6


class LayerProfilePaths(NamedTuple):
    csv: Path
    summary: Path
    figure: Path


def layer_profile(sae, shared_above: float = SHARED_ABOVE) -> dict:
    """The profile of every latent of ``sae`` (anything with ``layer_norms()`` → [d_sae, L]): ``norms`` [d_sae, L],
    ``fractions`` [d_sae, L] (zero for a latent with no decoder), ``top`` [d_sae] (index of the largest layer),
    ``top_share`` [d_sae], ``shared`` [d_sae] (bool), ``zero`` [d_sae] (bool)."""
    if not hasattr(sae, "layer_norms"):
        raise SaefwError(f"{type(sae).__name__} has no per-layer decoder norms (layer_norms()): the layer profile "
                         f"is for crosscoders (arch=crosscoder)")
    norms = sae.layer_norms().detach().float().cpu()
    if norms.dim() != 2:
        raise SaefwError(f"layer_norms() must be [d_sae, n_layers], got shape {tuple(norms.shape)}")
    total = norms.sum(-1, keepdim=True)
    zero = total.squeeze(-1) <= 0
    fractions = torch.where(total > 0, norms / total.clamp_min(1e-30), torch.zeros_like(norms))
    top_share, top = fractions.max(-1)
    shared = (top_share <= shared_above) & ~zero
    return {"norms": norms, "fractions": fractions, "top": top, "top_share": top_share, "shared": shared,
            "zero": zero}


def classes(profile: dict, layers: list[int]) -> list[str]:
    """``shared``, ``L<layer>`` (the latent's largest layer) or ``zero``, per latent."""
    return ["zero" if z else "shared" if s else f"L{layers[t]}"
            for z, s, t in zip(profile["zero"].tolist(), profile["shared"].tolist(), profile["top"].tolist())]


def profile_summary(profile: dict, layers: list[int], shared_above: float = SHARED_ABOVE) -> dict:
    names = classes(profile, layers)
    counts = {"shared": names.count("shared"), **{f"L{layer}": names.count(f"L{layer}") for layer in layers},
              "zero": names.count("zero")}
    live = profile["top_share"][~profile["zero"]]
    return {"format": FORMAT, "layers": list(layers), "shared_above": shared_above, "n_latents": len(names),
            "counts": counts, "median_top_share": round(live.median().item(), 6) if live.numel() else None}


def csv_text(profile: dict, layers: list[int]) -> str:
    buf = io.StringIO()
    cols = (["latent"] + [f"norm_L{layer}" for layer in layers] + [f"fraction_L{layer}" for layer in layers]
            + ["top_layer", "top_share", "class"])
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    names = classes(profile, layers)
    for i, (n, f, t, s) in enumerate(zip(profile["norms"].tolist(), profile["fractions"].tolist(),
                                         profile["top"].tolist(), profile["top_share"].tolist())):
        w.writerow([i, *(f"{v:.6g}" for v in n), *(f"{v:.6g}" for v in f), layers[t], f"{s:.6g}", names[i]])
    return buf.getvalue()


def write_figure(profile: dict, layers: list[int], path: Path, title: str = "") -> Path:
    """The relative-norm histogram (first vs last layer) and the sorted share heatmap, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = ~profile["zero"]
    norms, fractions = profile["norms"][live], profile["fractions"][live]
    first, last = norms[:, 0], norms[:, -1]
    pair = (first + last) > 0
    rel = (last[pair] / (first[pair] + last[pair])).numpy()
    fig, (ax, hm) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    ax.hist(rel, bins=40, range=(0.0, 1.0), color="tab:blue")
    ax.set_xlabel(f"relative decoder norm  ‖W^L{layers[-1]}‖ / (‖W^L{layers[0]}‖ + ‖W^L{layers[-1]}‖)")
    ax.set_ylabel("latents")
    ax.set_xlim(0, 1)
    order = sorted(range(len(fractions)), key=lambda i: (int(fractions[i].argmax()), -float(fractions[i].max())))
    image = fractions[order] if order else torch.zeros(1, len(layers))
    im = hm.imshow(image.numpy(), aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0, vmax=1.0)
    hm.set_xticks(range(len(layers)), [str(layer) for layer in layers])
    hm.set_xlabel("layer")
    hm.set_ylabel("latents (sorted by largest layer)")
    fig.colorbar(im, ax=hm, label="share of Σ_l ‖W_dec^l‖")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def write_layer_profile(sae, layers: list[int], out_dir: Path, shared_above: float = SHARED_ABOVE,
                        title: str = "") -> LayerProfilePaths:
    """Write ``layer_profile.csv``, ``layer_profile.json`` (the summary) and ``layer_profile.png`` for ``sae``,
    whose decoder segments are at the model's ``layers`` (in the order of its rows), into ``out_dir``
    (atomically); returns their paths."""
    layers = [int(layer) for layer in layers]
    profile = layer_profile(sae, shared_above)
    if len(layers) != profile["norms"].shape[1]:
        raise SaefwError(f"layers={layers} names {len(layers)} layers, but the SAE writes "
                         f"{profile['norms'].shape[1]}")
    if len(set(layers)) != len(layers):
        raise SaefwError(f"layers={layers} names a layer twice")
    out_dir = Path(out_dir)
    csv_path = write_text(out_dir / "layer_profile.csv", csv_text(profile, layers))
    summary_path = write_json(out_dir / "layer_profile.json", profile_summary(profile, layers, shared_above))
    figure = write_figure(profile, layers, out_dir / "layer_profile.png", title)
    return LayerProfilePaths(csv_path, summary_path, figure)
