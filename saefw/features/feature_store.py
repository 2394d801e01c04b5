"""The feature store: what ``python -m saefw.features`` computed, saved once in ``<run>/features/`` so other
commands (relations, explanations) read it instead of scanning again.

Files (safetensors for tensors, JSON for the rest; every tensor is indexed by feature first):

* ``meta.json`` — ``format``, ``settings`` (``scan`` and ``logit_lens``: the keys a rerun compares to decide
  whether to reuse), ``sae`` (model, layer, site, hook_name, d_in, d_sae, digest; a transcoder adds
  site_out, hook_name_out and d_out: ``site``/``hook_name`` are its input), ``scan`` (n_contexts,
  n_tokens, context_size, corpus, split), ``window`` (before, after, max_index), ``quantile_levels``,
  ``dead`` and ``dense`` (lists of feature indices) with ``dense_threshold``.
* ``tokens.safetensors`` — ``tokens`` [n_contexts, context_size] int32: the scanned contexts, BOS in column 0.
* ``stats.safetensors`` — [d_sae]: ``fired`` (int64), ``density``, ``mean_act``, ``mean_act_firing``,
  ``max_act``, ``hist_sampled`` (firing tokens the histogram and quantile edges were estimated from; equal to
  ``fired`` when exact); ``hist_counts`` [d_sae, bins] (scaled to ``fired``), ``hist_edges`` [d_sae, bins + 1].
* ``top.safetensors`` — [d_sae, top_n]: ``value`` (max activation in the context, descending; 0 = empty
  slot), ``context`` (row of ``tokens``; −1 = empty), ``position`` (of the max token in the context, ≥ 1);
  ``acts`` [d_sae, top_n, W] the feature's activation on the window ``position − before … position + after``
  (W = before + 1 + after; the max token is at index ``before``; 0 outside the context and at BOS).
* ``quantiles.safetensors`` — ``edges`` [d_sae, R + 1] (R equal-count ranges of the firing activations);
  [d_sae, R, S]: ``value`` (NaN = empty), ``context``, ``position`` (−1 = empty); ``acts`` [d_sae, R, S, W].
* ``logit_lens.safetensors`` — [d_sae, k]: ``promoted_ids``, ``promoted_values`` (descending),
  ``suppressed_ids``, ``suppressed_values`` (ascending) of W_U · d_i.

Window tokens are not stored twice: :meth:`FeatureData.window_tokens` reads them from ``tokens``.
Every file is written atomically (tmp + rename) and ``meta.json`` last, so a store whose meta matches the
settings is complete.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saefw.errors import SaefwError

FORMAT = "saefw.features/1"
FOLDER = "features"
TENSOR_FILES = ("tokens", "stats", "top", "quantiles", "logit_lens")


def store_dir(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER


def sae_digest(sae) -> str:
    """A digest of the SAE's weights, so a store is never reused for a retrained SAE in the same folder."""
    h = hashlib.sha256()
    for name, t in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class FeatureData:
    """A loaded feature store (see the module docstring for every field)."""

    meta: dict
    tokens: Tensor
    stats: dict[str, Tensor]
    top: dict[str, Tensor]
    quantiles: dict[str, Tensor]
    logit_lens: dict[str, Tensor]

    @property
    def d_sae(self) -> int:
        return int(self.stats["fired"].shape[0])

    @property
    def dead(self) -> list[int]:
        return list(self.meta["dead"])

    @property
    def dense(self) -> list[int]:
        return list(self.meta["dense"])

    def window_tokens(self, context: Tensor, position: Tensor) -> Tensor:
        """Token ids [..., W] of the windows at (``context``, ``position``) (any matching shapes), −1 outside
        the context, at BOS, and for empty slots (context −1)."""
        before, after = self.meta["window"]["before"], self.meta["window"]["after"]
        T = self.tokens.shape[1]
        pos = position[..., None] + torch.arange(-before, after + 1)
        valid = (pos >= 1) & (pos < T) & (context[..., None] >= 0)
        ids = self.tokens[context.clamp_min(0)[..., None].expand_as(pos), pos.clamp(0, T - 1)].long()
        return torch.where(valid, ids, torch.full_like(ids, -1))


def _save_atomic(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def write_json_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def save(folder: Path, data: FeatureData) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        meta_path.unlink()  # the store is incomplete until the new meta is written
    for name in TENSOR_FILES:
        _save_atomic(getattr(data, name) if name != "tokens" else {"tokens": data.tokens},
                     folder / f"{name}.safetensors")
    write_json_atomic({"format": FORMAT, **data.meta}, meta_path)


def read_meta(folder: Path) -> dict | None:
    """The store's meta.json, or None when there is no complete store in ``folder``."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("format") != FORMAT or not all((Path(folder) / f"{n}.safetensors").is_file() for n in TENSOR_FILES):
        return None
    return meta


def load(run_dir: Path) -> FeatureData:
    """Load ``<run_dir>/features`` (or a features folder itself); a clear error when it is missing."""
    folder = Path(run_dir)
    if not (folder / "meta.json").is_file():
        folder = store_dir(run_dir)
    meta = read_meta(folder)
    if meta is None:
        raise SaefwError(f"no complete feature store in {folder}: run `python -m saefw.features run={run_dir}` "
                         f"first")
    try:
        parts = {n: load_file(str(folder / f"{n}.safetensors")) for n in TENSOR_FILES}
    except Exception as exc:  # safetensors raises several types for truncated files
        raise SaefwError(f"the feature store in {folder} is corrupt ({exc}); rerun with force=true") from None
    return FeatureData(meta=meta, tokens=parts["tokens"]["tokens"], stats=parts["stats"], top=parts["top"],
                       quantiles=parts["quantiles"], logit_lens=parts["logit_lens"])
