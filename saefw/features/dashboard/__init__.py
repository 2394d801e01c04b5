"""The static HTML feature dashboard: ``<dashboard>/index.html`` opens from disk, with no server and no network.

Layout of the dashboard folder:

* ``index.html`` — the page: CSS and the app script inline, then ``<script>`` tags for ``data/index.js`` and
  every ``ext/*.js`` (sorted by name), then ``SAEFW.start()``.
* ``data/index.js`` — ``SAEFW.setIndex({...})``: run info, per-feature columns (``fired``, ``density``,
  ``max``, ``mean`` (where firing), ``mean_all``, ``top_tokens``, ``promoted``), ``dense_threshold``,
  ``window``, ``chunk_size`` and ``vocab`` (text of every token id the data uses).
* ``data/features_NNNN.js`` — ``SAEFW.addChunk(NNNN, {fid: {...}})`` for features NNNN·chunk_size … : ``top``
  and quantile ``samples`` as ``[value, context, position, token ids, activations]`` windows, ``quantiles``
  ranges (``lo``, ``hi``, ``samples``), ``lens`` (``promoted``/``suppressed`` as [token id, value] pairs),
  ``hist`` (``counts``, ``max``, ``sampled``). Loaded only when a feature of the chunk is opened.
* ``ext/<name>.js`` — extensions written by other commands with :func:`add_extension`; they call
  ``SAEFW.addPanel`` / ``SAEFW.addIndexColumn`` (see ``app.js``) and survive a rewrite of the dashboard.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from saefw.errors import SaefwError
from saefw.features.feature_store import FeatureData

_HERE = Path(__file__).parent
_EXT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _r(x: float, digits: int = 4) -> float:
    """Round to ``digits`` significant digits (keeps the data files small)."""
    if not math.isfinite(x) or x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def _js(obj) -> str:
    # "</" never appears in JSON we embed, but token text might contain it
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _window_entries(data: FeatureData, value, context, position, acts, used: set) -> list:
    """[value, context, position, token ids, activations] per filled slot (context ≥ 0)."""
    keep = context >= 0
    if not bool(keep.any()):
        return []
    ids = data.window_tokens(context[keep], position[keep])
    out = []
    for v, c, p, w, a in zip(value[keep].tolist(), context[keep].tolist(), position[keep].tolist(), ids.tolist(),
                             acts[keep].tolist()):
        used.update(i for i in w if i >= 0)
        out.append([_r(v), c, p, w, [_r(x) for x in a]])
    return out


def feature_record(data: FeatureData, fid: int, contexts: int, samples: int, used: set) -> dict:
    """The dashboard's data for one feature (see the module docstring)."""
    top, q, lens, st = data.top, data.quantiles, data.logit_lens, data.stats
    n_top = min(contexts, top["value"].shape[1])
    rec = {"top": _window_entries(data, top["value"][fid, :n_top], top["context"][fid, :n_top],
                                  top["position"][fid, :n_top], top["acts"][fid, :n_top], used)}
    edges = q["edges"][fid]
    ranges = []
    for k in range(q["value"].shape[1]):
        sl = slice(0, samples)
        ranges.append({"lo": _r(edges[k].item()), "hi": _r(edges[k + 1].item()),
                       "samples": _window_entries(data, q["value"][fid, k, sl], q["context"][fid, k, sl],
                                                  q["position"][fid, k, sl], q["acts"][fid, k, sl], used)})
    rec["quantiles"] = ranges if rec["top"] else []
    pro, sup = lens["promoted_ids"][fid].tolist(), lens["suppressed_ids"][fid].tolist()
    used.update(pro)
    used.update(sup)
    rec["lens"] = {"promoted": [[i, _r(v)] for i, v in zip(pro, lens["promoted_values"][fid].tolist())],
                   "suppressed": [[i, _r(v)] for i, v in zip(sup, lens["suppressed_values"][fid].tolist())]}
    if rec["top"]:
        sampled = int(st["hist_sampled"][fid])
        rec["hist"] = {"counts": [_r(c) for c in st["hist_counts"][fid].tolist()],
                       "max": _r(st["max_act"][fid].item()), "sampled": sampled}
    return rec


def top_tokens(data: FeatureData, fid: int, n: int = 3) -> list[int]:
    """The most frequent max-activating tokens among a feature's top contexts (ties: higher activation first)."""
    ctx, pos = data.top["context"][fid], data.top["position"][fid]
    keep = ctx >= 0
    ids = data.tokens[ctx[keep], pos[keep]].tolist()
    return [i for i, _ in Counter(ids).most_common(n)]


def write_dashboard(data: FeatureData, out_dir: Path, token_text: Callable[[list[int]], list[str]],
                    run_info: dict, contexts: int = 10, samples: int = 2, chunk_size: int = 64,
                    progress: bool = True) -> Path:
    """Write the dashboard of ``data`` into ``out_dir``; returns the path of ``index.html``.

    ``token_text`` maps token ids to their display text; ``run_info`` (model, hook_name, corpus, split,
    folder ...) is shown in the header; ``contexts`` top contexts and ``samples`` per quantile range are shown
    per feature; ``chunk_size`` features share one data file."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if chunk_size < 1:
        raise SaefwError(f"dashboard.chunk_size={chunk_size} must be at least 1")
    st, used = data.stats, set()
    n = data.d_sae
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob("features_*.js"):
        old.unlink()
    for c in tqdm(range(math.ceil(n / chunk_size)), desc="writing dashboard", unit="chunk", disable=not progress):
        fids = range(c * chunk_size, min(n, (c + 1) * chunk_size))
        chunk = {fid: feature_record(data, fid, contexts, samples, used) for fid in fids}
        _write(data_dir / f"features_{c:04d}.js", f"SAEFW.addChunk({c},{_js(chunk)});\n")
    tops = [top_tokens(data, fid) for fid in range(n)]
    promoted = data.logit_lens["promoted_ids"][:, :5].tolist()
    for ids in tops + promoted:
        used.update(ids)
    ids = sorted(used)
    vocab = dict(zip(ids, token_text(ids)))
    index = {"run": {**run_info, "d_sae": n, "n_tokens": data.meta["scan"]["n_tokens"]},
             "dense_threshold": data.meta["dense_threshold"], "window": data.meta["window"],
             "chunk_size": chunk_size,
             "features": {"fired": st["fired"].tolist(), "density": [_r(x, 6) for x in st["density"].tolist()],
                          "max": [_r(x, 6) for x in st["max_act"].tolist()],
                          "mean": [_r(x, 6) for x in st["mean_act_firing"].tolist()],
                          "mean_all": [_r(x, 6) for x in st["mean_act"].tolist()],
                          "top_tokens": tops, "promoted": promoted},
             "vocab": vocab}
    _write(data_dir / "index.js", f"SAEFW.setIndex({_js(index)});\n")
    return write_page(out_dir)


def write_page(out_dir: Path) -> Path:
    """(Re)write ``index.html``, including every ``ext/*.js`` present."""
    out_dir = Path(out_dir)
    exts = sorted(p.name for p in (out_dir / "ext").glob("*.js")) if (out_dir / "ext").is_dir() else []
    scripts = "\n".join(f'<script src="ext/{name}"></script>' for name in exts)
    page = (_HERE / "page.html").read_text()
    page = (page.replace("/*STYLE*/", (_HERE / "style.css").read_text())
                .replace("/*APP*/", (_HERE / "app.js").read_text())
                .replace("<!--EXTENSIONS-->", scripts))
    _write(out_dir / "index.html", page)
    return out_dir / "index.html"


def add_extension(dashboard_dir: Path, name: str, script: str) -> Path:
    """Install ``script`` as ``ext/<name>.js`` of the dashboard in ``dashboard_dir`` and rewrite its page to
    load it. The script runs after the core app and the index data, before the page renders, and typically
    calls ``SAEFW.addPanel({id, title, slot, render(fid, el, api)})`` or ``SAEFW.addIndexColumn(...)``."""
    dashboard_dir = Path(dashboard_dir)
    if not _EXT_NAME.match(name):
        raise SaefwError(f"dashboard extension name {name!r} must be letters, digits, '_' or '-'")
    if not (dashboard_dir / "index.html").is_file():
        raise SaefwError(f"no dashboard in {dashboard_dir}: run `python -m saefw.features` first")
    _write(dashboard_dir / "ext" / f"{name}.js", script)
    return write_page(dashboard_dir)


def decode_tokens(tokenizer) -> Callable[[list[int]], list[str]]:
    """Display text of single token ids (spaces kept, so a leading space shows as a space)."""
    def text(ids: list[int]) -> list[str]:
        return [tokenizer.decode([i]) for i in ids]
    return text


