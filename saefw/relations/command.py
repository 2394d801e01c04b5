"""``python -m saefw.relations runs=[<dir L>,<dir L+1>,...]``: how the features of SAEs at successive hook points of
one model relate, by weights (decoder cosine, :mod:`saefw.relations.decoder_cosine`) and by effect (ablation,
:mod:`saefw.relations.ablation`), for every adjacent pair of runs.

Writes ``relations.json``/``relations.csv`` (:mod:`saefw.relations.table`), ``relations.html`` and
``relations.png`` (:mod:`saefw.relations.graph`) into ``out``, and a "Relations" panel into the dashboard
of every run that has one (:mod:`saefw.relations.panel`).

``crosscoder=<dir>`` (a crosscoder's run directory, with or without ``runs``): how its latents spread over the
layers it reads, from its decoder norms alone (no model, no text): ``layer_profile.csv``/``.json``/``.png``
(:mod:`saefw.relations.layer_profile`) in ``out``, and a section of ``relations.html`` where that is written.

The ablations of a pair start at the upstream hook point from the clean residual stream its firing pass kept
(``n_tokens`` × d × 4 bytes of host memory, e.g. 75 MB for 32k tokens of SmolLM2), so they run only the blocks
between the two hook points.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig

from saefw.app.device import resolve_device
from saefw.errors import SaefwError
from saefw.io.saved import load_sae, read_config, sae_metadata
from saefw.lm.model import LanguageModel
from saefw.relations import graph as graph_mod
from saefw.relations.ablation import ablation_effects, select_sources, source_firing
from saefw.relations.decoder_cosine import best_matches
from saefw.relations.layer_profile import SHARED_ABOVE, write_layer_profile
from saefw.relations.panel import write_relations_panel
from saefw.relations.table import (
    RunInfo,
    cosine_edges,
    cosine_effect_note,
    effect_edges,
    relations_record,
    strongest,
    write_relations,
)

log = logging.getLogger("saefw.relations")


@dataclass
class RelationsConfig:
    runs: list[str] | None = None  # run directories (any saved SAE directories) in forward-pass order
    crosscoder: str | None = None  # a crosscoder's run directory (arch=crosscoder): its per-layer decoder profile
    shared_above: float = SHARED_ABOVE  # a crosscoder latent is shared when no layer holds more than this share
    out: str = MISSING  # output directory (the config file gives a dated one under outputs/relations/)
    corpus: str | None = None  # default: the first SAE's training corpus
    corpus_text_field: str = "text"
    split: str = "heldout"  # heldout | train | all
    heldout_fraction: float = 0.05
    context_size: int | None = None  # default: the first SAE's training context size
    n_tokens: int = 16_384  # held-out tokens the ablations run on
    top_m: int = 32  # features ablated per upstream SAE: the densest ones not denser than max_density ...
    max_density: float = 0.1
    features: Any = None  # ... or these: a list (every upstream SAE) or a list of lists (one per upstream SAE)
    effect_k: int = 5  # strongest targets kept per ablated feature
    cosine_k: int = 3  # best decoder-cosine matches kept per feature
    graph_edges: int = 60  # effect edges drawn (the strongest, plus each ablated feature's strongest)
    batch_rows: int = 32  # context rows per forward pass of the ablation
    batch_contexts: int = 16  # contexts per forward pass of the clean scan
    device: str = "auto"
    dashboards: bool = True  # add the relations panel to each run's dashboard


def register_schema() -> None:
    ConfigStore.instance().store(name="saefw_relations_schema", node=RelationsConfig)


def _run_label(meta: dict, folder: Path) -> str:
    return f"L{meta['layer']} {meta['site']}" if meta.get("layer") is not None else folder.name


def check_runs(runs: list[str]) -> list[tuple[Path, dict]]:
    """The runs' folders and metadata: at least two, one model, hook points strictly in forward order."""
    from saefw.io.saved import hooked_sae_metadata
    from saefw.relations.ablation import depth

    if runs is None:
        raise SaefwError("give runs=[<dir L>,<dir L+1>,...] (SAEs at successive hook points of one model) and/or "
                         "crosscoder=<dir> (a crosscoder's run directory)")
    if not isinstance(runs, (list, tuple, ListConfig)) or len(runs) < 2:
        raise SaefwError(f"runs={runs!r} must list at least two run directories: runs=[<dir L>,<dir L+1>]")
    out = []
    for r in runs:
        folder = Path(str(r)).expanduser()
        out.append((folder, hooked_sae_metadata(folder, "runs")))
    models = {m["model"] for _, m in out}
    if len(models) > 1:
        raise SaefwError(f"runs read different models ({', '.join(sorted(map(str, models)))}): relations need SAEs "
                         f"of one model")
    for (fa, a), (fb, b) in zip(out, out[1:]):
        if depth((int(b["layer"]), b["site"])) <= depth((int(a["layer"]), a["site"])):
            raise SaefwError(f"runs must be in forward-pass order: {fb} (layer {b['layer']} {b['site']}) does not come "
                             f"after {fa} (layer {a['layer']} {a['site']})")
    return out


def feature_lists(features, n_upstream: int, d_saes: list[int]) -> list[list[int] | None]:
    """``features`` as one list (or None: choose by density) per upstream SAE."""
    from saefw.features.steering import check_features

    if features is None:
        return [None] * n_upstream
    items = list(features) if isinstance(features, (list, tuple, ListConfig)) else [features]
    nested = items and all(isinstance(x, (list, tuple, ListConfig)) for x in items)
    if nested and len(items) != n_upstream:
        raise SaefwError(f"features has {len(items)} lists for {n_upstream} upstream runs: give one per run, or "
                         f"one flat list for all")
    lists = [list(x) for x in items] if nested else [items] * n_upstream
    return [check_features(lst, d) for lst, d in zip(lists, d_saes)]


def check_settings(cfg) -> None:
    from saefw.lm.corpus import SPLITS

    if cfg.split not in SPLITS:
        raise SaefwError(f"split={cfg.split!r} is not a split; choices: {', '.join(SPLITS)}")
    for key in ("n_tokens", "top_m", "effect_k", "cosine_k", "graph_edges", "batch_contexts"):
        if cfg[key] < 1:
            raise SaefwError(f"{key}={cfg[key]} must be at least 1")
    if not 0 < cfg.max_density <= 1:
        raise SaefwError(f"max_density={cfg.max_density} must be in (0, 1]")
    if not 0 < cfg.shared_above <= 1:
        raise SaefwError(f"shared_above={cfg.shared_above} must be in (0, 1]")
    if cfg.runs is None and cfg.crosscoder is None:
        check_runs(None)


def crosscoder_layers(folder: Path, n_layers: int) -> list[int]:
    """The model layers a crosscoder's decoder segments write, in their order: ``metadata.layers`` of its cfg.json
    (what training records from ``source.layers``), else their positions 0 … L−1 (with a warning)."""
    meta = read_config(folder).get("metadata")
    layers = meta.get("layers") if isinstance(meta, dict) else None
    if isinstance(layers, list) and len(layers) == n_layers and all(isinstance(x, int) for x in layers):
        return layers
    log.warning("%s does not record the %d layers its crosscoder reads (metadata.layers): its layers are numbered by "
                "position, 0 … %d", folder, n_layers, n_layers - 1)
    return list(range(n_layers))


def load_crosscoder(crosscoder: str):
    """The crosscoder saved in ``crosscoder`` (on the CPU: only its decoder is read), with a clear error for any
    other SAE."""
    folder = Path(str(crosscoder)).expanduser()
    if not folder.is_dir():
        raise SaefwError(f"crosscoder={str(crosscoder)!r} is not a directory")
    sae = load_sae(folder)
    if sae.layout != "layers" or not hasattr(sae, "layer_norms"):
        raise SaefwError(f"crosscoder={folder} holds an arch={sae.plugin_name} SAE (layout {sae.layout!r}); expected "
                         f"arch=crosscoder, one dictionary over several layers (trained with source.layers=[...]). "
                         f"Separately trained SAEs at successive layers go in runs=[...]")
    return folder, sae


def crosscoder_profile(cfg, out_dir: Path, folder: Path, sae) -> dict:
    """The layer profile of the crosscoder ``sae`` (saved in ``folder``) written into ``out_dir``: its paths,
    summary (what ``layer_profile.json`` holds), label and layers."""
    layers = crosscoder_layers(folder, sae.n_layers)
    meta = sae_metadata(folder)
    label = f"crosscoder L{layers[0]}\u2013{layers[-1]}" + (f" {meta['site']}" if meta.get("site") else "")
    title = f"{label} ({sae.d_sae:,} latents)" + (f" of {meta['model']}" if meta.get("model") else "")
    paths = write_layer_profile(sae, layers, out_dir, cfg.shared_above, title=f"Decoder norm per layer: {title}")
    return {"folder": str(folder), "label": label, "layers": layers, "csv": str(paths.csv),
            "json": str(paths.summary), "png": str(paths.figure),
            "summary": json.loads(paths.summary.read_text())}


def held_out_contexts(cfg, lm, corpus: str, context_size: int) -> torch.Tensor:
    """The first ``n_tokens`` (BOS excluded) of the split as contexts [N, context_size], BOS first."""
    import math

    from saefw.features.scan import context_batches
    from saefw.lm.corpus import Corpus, documents_of_split

    n = math.ceil(cfg.n_tokens / (context_size - 1))
    docs = documents_of_split(Corpus(corpus, text_field=cfg.corpus_text_field), cfg.split, cfg.heldout_fraction)
    parts = list(context_batches(lm, docs, context_size, n, 256))
    if not parts:
        raise SaefwError(f"corpus={corpus!r} split={cfg.split} has fewer tokens than one context of {context_size}")
    return torch.cat(parts)


def top_token_labels(folder: Path, tokenizer, run: int, feats: set[int]) -> dict[tuple[int, int], str]:
    """(run, feature) → its most frequent max-activating tokens, from the run's feature store if it has one."""
    from saefw.features import feature_store as store
    from saefw.features.dashboard import top_tokens

    if store.read_meta(store.store_dir(folder)) is None:
        return {}
    data = store.load(folder)
    out = {}
    for f in feats:
        words = [repr(tokenizer.decode([i]).strip())[1:-1][:12] for i in top_tokens(data, f, 2)]
        out[(run, f)] = " · ".join(w for w in words if w)
    return out


def pair_relations(cfg, k: int, up, down, infos: list, lm, contexts, sources) -> tuple[dict, list[dict]]:
    """Relations of run ``k``'s SAE (``up``) to run ``k+1``'s (``down``): decoder cosine (same width only) and the
    effects of ablating ``sources`` (None: the top-firing ones) upstream on the downstream latents: (the pair's
    record, its edges)."""
    edges = []
    up_point, down_point = (infos[k].layer, infos[k].site), (infos[k + 1].layer, infos[k + 1].site)
    same_width = up.d_in == down.d_in
    if same_width:
        edges = cosine_edges(best_matches(up.decoder_directions, down.decoder_directions, cfg.cosine_k), k, k + 1)
    else:
        log.warning("%s and %s have different widths: no decoder cosine", infos[k].label, infos[k + 1].label)
    firing = source_firing(lm, up, up_point, contexts, cfg.batch_contexts)
    sources = sources if sources is not None else select_sources(firing, cfg.top_m, cfg.max_density)
    effects = ablation_effects(lm, up, up_point, down, down_point, contexts, sources, firing.in_context,
                               cfg.batch_rows, states=firing.states)
    firing.states = None  # N × T × d floats: free them before the next pair's pass
    edges += effect_edges(effects, firing, k, k + 1, cfg.effect_k,
                          up.decoder_directions if same_width else None,
                          down.decoder_directions if same_width else None)
    pair = {"source_run": k, "target_run": k + 1, "sources": effects.sources, "n_tokens": effects.n_tokens,
            "n_contexts": len(contexts), "rows": effects.rows, "resumed": effects.resumed}
    return pair, edges


def write_figures(cfg, record: dict, edges: list[dict], runs: list, infos: list, tokenizer, out_dir: Path,
                  model: str, profile: dict | None = None) -> tuple[Path, Path, list[str], list[dict]]:
    """The effect graph as PNG and HTML (features labelled by their top tokens, linked to their dashboards; with a
    section for a crosscoder's layer ``profile``) and a relations panel in each run's dashboard: (png, html,
    panels, the strongest edges as table rows)."""
    nodes: dict[int, set[int]] = {}
    for e in edges:
        if e["kind"] == "effect":
            nodes.setdefault(e["source_run"], set()).add(e["source"])
            nodes.setdefault(e["target_run"], set()).add(e["target"])
    labels = {}
    for k, feats in nodes.items():
        labels.update(top_token_labels(runs[k][0], tokenizer, k, feats))
    hrefs = {i.index: graph_mod.relative_href(out_dir, i.dashboard) for i in infos if i.dashboard}
    graph = graph_mod.build_graph(record, labels, hrefs, max_edges=cfg.graph_edges)
    title = f"Feature relations by effect: {' → '.join(i.label for i in infos)} of {model}"
    png = graph_mod.write_png(graph, out_dir / "relations.png", title)

    def name(run: int, f: int) -> str:
        text = labels.get((run, f))
        return f"{infos[run].label} #{f}" + (f" ({text})" if text else "")

    top_edges = strongest(record, "effect", 50)
    table = [{"source": name(e["source_run"], e["source"]), "target": name(e["target_run"], e["target"]),
              "value": e["value"], "fraction": e["fraction"], "cosine": e["cosine"]} for e in top_edges]
    html = graph_mod.write_html(graph, out_dir / "relations.html", title, table,
                                page_profile(profile, out_dir) if profile else None)
    panels = []
    if cfg.dashboards:
        for info in infos:
            if info.dashboard:
                panels.append(str(write_relations_panel(record, info.index, Path(info.dashboard).parent, html)))
    return png, html, panels, table


def relations(cfg, output_dir: Path | None = None) -> dict:
    """The command (see the module docstring): the chain of ``runs``, the layer profile of ``crosscoder``, or both
    (into the same ``out``)."""
    check_settings(cfg)
    runs = check_runs(cfg.runs) if cfg.runs is not None else None
    crosscoder = load_crosscoder(cfg.crosscoder) if cfg.crosscoder is not None else None  # fail before the runs
    out_dir = Path(cfg.out if cfg.out else output_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out": str(out_dir)}
    if crosscoder is not None:
        summary["layer_profile"] = crosscoder_profile(cfg, out_dir, *crosscoder)
    top, note = [], ""
    if runs is not None:
        chain, top, note = chain_relations(cfg, runs, out_dir, summary.get("layer_profile"))
        summary.update(chain)
    print_summary(summary, top[:10], note)
    return summary


def chain_relations(cfg, runs: list[tuple[Path, dict]], out_dir: Path, profile: dict | None
                    ) -> tuple[dict, list[dict], str]:
    """Relations of the SAEs of ``runs`` written into ``out_dir`` (``profile``: a crosscoder's layer profile for a
    section of the page): (their paths and edge counts, the strongest edges as table rows, the cosine/effect
    note)."""
    device = resolve_device(cfg.device)
    saes = [load_sae(folder, device=device) for folder, _ in runs]
    for (folder, _), sae in zip(runs, saes):
        if sae.layout != "site":
            raise SaefwError(f"runs: {folder} holds an arch={sae.plugin_name} SAE (layout {sae.layout!r}); runs= "
                             f"takes SAEs that read and write one hook point"
                             + (": pass a crosscoder as crosscoder=<dir>" if sae.layout == "layers" else ""))
    chosen = feature_lists(cfg.features, len(runs) - 1, [s.d_sae for s in saes[:-1]])
    first = runs[0][1]
    corpus = cfg.corpus or first.get("corpus")
    if corpus is None:
        raise SaefwError(f"{runs[0][0]} does not name the corpus its SAE was trained on: pass corpus=<name>")
    context_size = cfg.context_size or first.get("context_size") or 128
    if context_size < 2:
        raise SaefwError(f"context_size={context_size} must be at least 2 (BOS + one token)")
    lm = LanguageModel(first["model"], int(first["layer"]), first["site"], device=device)
    contexts = held_out_contexts(cfg, lm, corpus, context_size)
    infos = []
    for k, ((folder, meta), sae) in enumerate(zip(runs, saes)):
        page = folder / "dashboard" / "index.html"
        infos.append(RunInfo(index=k, folder=str(folder), label=_run_label(meta, folder), model=str(meta["model"]),
                             layer=int(meta["layer"]), site=meta["site"],
                             hook_name=meta.get("hook_name") or f"blocks.{meta['layer']}.hook_{meta['site']}",
                             d_sae=sae.d_sae, dashboard=str(page) if page.is_file() else None))
    pairs, edges = [], []
    for k in range(len(runs) - 1):
        pair, pair_edges = pair_relations(cfg, k, saes[k], saes[k + 1], infos, lm, contexts, chosen[k])
        pairs.append(pair)
        edges += pair_edges
    settings = {"corpus": corpus, "split": cfg.split, "heldout_fraction": cfg.heldout_fraction,
                "context_size": context_size, "n_tokens": cfg.n_tokens, "top_m": cfg.top_m,
                "max_density": cfg.max_density, "features": chosen if cfg.features is not None else None,
                "effect_k": cfg.effect_k, "cosine_k": cfg.cosine_k}
    record = relations_record(infos, pairs, edges, settings)
    json_path, csv_path = write_relations(out_dir, record)
    png, html, panels, table = write_figures(cfg, record, edges, runs, infos, lm.tokenizer, out_dir, first["model"],
                                             profile)
    chain = {"json": str(json_path), "csv": str(csv_path), "html": str(html), "png": str(png), "dashboards": panels,
             "edges": {"cosine": sum(e["kind"] == "cosine" for e in edges),
                       "effect": sum(e["kind"] == "effect" for e in edges)}}
    return chain, table, cosine_effect_note(record)


def profile_lines(profile: dict) -> list[str]:
    """How many of the crosscoder's latents live in each layer and how many are shared, as summary lines."""
    summary = profile["summary"]
    counts, n = summary["counts"], summary["n_latents"]

    def share(k: int) -> str:
        return f"{k:,} ({100 * k / n:.0f} %)" if n else "0"

    lines = ["", f"{profile['label']} ({profile['folder']}): {n:,} latents by decoder norm per layer",
             f"  shared (no layer above {summary['shared_above']:g} of its norm): {share(counts['shared'])}"]
    lines += [f"  L{layer} only or mostly: {share(counts[f'L{layer}'])}" for layer in summary["layers"]]
    if counts.get("zero"):
        lines.append(f"  no decoder (zero norm): {share(counts['zero'])}")
    return lines


def page_profile(profile: dict, out_dir: Path) -> dict:
    """What the relations page shows of a crosscoder's layer profile: its label, counts and figure (linked
    relative to the page in ``out_dir``)."""
    summary = profile["summary"]
    return {"label": profile["label"], "layers": summary["layers"], "counts": summary["counts"],
            "n_latents": summary["n_latents"], "shared_above": summary["shared_above"],
            "figure": graph_mod.relative_href(out_dir, profile["png"]),
            "table": graph_mod.relative_href(out_dir, profile["csv"])}


def print_summary(summary: dict, top: list[dict], note: str) -> None:
    rows = []
    if "edges" in summary:
        rows += [("edges", f"{summary['edges']['effect']:,} by effect, {summary['edges']['cosine']:,} by decoder "
                           f"cosine"),
                 ("table", f"{summary['csv']}  {summary['json']}"), ("graph", f"{summary['html']}  {summary['png']}"),
                 ("dashboards", ", ".join(summary["dashboards"]) or "(no run has a dashboard: run saefw.features)")]
    profile = summary.get("layer_profile")
    if profile:
        rows.append(("layer profile", f"{profile['csv']}  {profile['json']}  {profile['png']}"))
    width = max(len(k) for k, _ in rows)
    lines = ["", "saefw relations", "-" * 40] + [f"{k:<{width}}  {v}" for k, v in rows]
    if profile:
        lines += profile_lines(profile)
    if top:
        lines += ["", "strongest edges (mean drop of the target where it fired when the source is ablated):"]
        lines += [f"  {r['source']} -> {r['target']}: effect {r['value']:.4g}, fraction {r['fraction']:.3g}"
                  + (f", cosine {r['cosine']:.3f}" if r["cosine"] is not None else "") for r in top]
    if note:
        lines += ["", note]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> None:
    from saefw.app.cli import command

    register_schema()
    command("relations", relations, argv)
