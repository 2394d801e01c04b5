"""The relations graph: the effect edges of a relations record drawn layer by layer, edge width = strength.

:func:`build_graph` lays the nodes out in one column per run (ablated sources in density order; each later
column ordered by the strength-weighted mean height of the sources feeding it, which keeps crossings few);
:func:`write_png` draws it with matplotlib and :func:`write_html` writes an interactive page (inline SVG and
script: no server, no network) whose nodes link to the features' dashboard pages.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from saefw.app.atomic import atomic_path, write_text

_HERE = Path(__file__).parent


@dataclass
class Graph:
    """``nodes``: {id, run, feature, label, tokens, x (column), y (row), href}; ``edges``: {source, target (node
    ids), kind, value, fraction, cosine, width}; ``columns``: run labels."""

    nodes: list[dict] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def node_id(run: int, feature: int) -> str:
    return f"{run}:{feature}"


def select_edges(effect: list[dict], max_edges: int) -> list[dict]:
    """The ``max_edges`` strongest effect edges, plus each source's strongest one (so every ablated feature with
    an effect is drawn)."""
    ranked = sorted(effect, key=lambda e: -abs(e["value"]))
    keep = {id(e) for e in ranked[:max_edges]} | {id(e) for e in effect if e["rank"] == 1}
    return [e for e in ranked if id(e) in keep]


def build_graph(record: dict, tokens: dict[tuple[int, int], str] | None = None,
                hrefs: dict[int, str] | None = None, max_edges: int = 60, max_width: float = 8.0) -> Graph:
    """The graph of ``record``'s strongest effect edges (:func:`select_edges`) and the cosine matches between
    the nodes they touch.

    ``tokens`` maps (run, feature) to a short text (its top tokens) shown beside the node; ``hrefs`` maps a
    run to the link of its dashboard page (``#feature-N`` is appended). Each column is spread over the height
    of the longest one; a target sits near the source that drives it most."""
    tokens, hrefs = tokens or {}, hrefs or {}
    effect = select_edges([e for e in record["edges"] if e["kind"] == "effect"], max_edges)
    graph = Graph(columns=[r["label"] for r in record["runs"]])
    if not effect:
        return graph
    top = max(abs(e["value"]) for e in effect) or 1.0
    order: dict[int, list[int]] = {}
    for pair in record["pairs"]:  # sources first, in the order they were chosen (densest first)
        col = order.setdefault(pair["source_run"], [])
        col.extend(s for s in pair["sources"] if s not in col and any(
            e["source"] == s and e["source_run"] == pair["source_run"] for e in effect))
    height: dict[tuple[int, int], float] = {}
    for run in sorted({r["index"] for r in record["runs"]}):
        col = order.setdefault(run, [])
        incoming: dict[int, list[tuple[float, float]]] = {}
        for e in effect:
            if e["target_run"] == run:
                y = height.get((e["source_run"], e["source"]), 0.0)
                incoming.setdefault(e["target"], []).append((y, abs(e["value"])))
        # the strongest driver's height first, the strength-weighted mean height to break ties
        key = {t: (max(v, key=lambda p: p[1])[0], sum(y * w for y, w in v) / max(sum(w for _, w in v), 1e-30))
               for t, v in incoming.items()}
        new = sorted((t for t in key if t not in col), key=lambda t: (*key[t], t))
        order[run] = col + new  # a column that is both a target and a source keeps its sources first
        for y, f in enumerate(order[run]):
            height[(run, f)] = y / max(len(order[run]) - 1, 1)
    rows = max(len(v) for v in order.values())
    ids = set()
    for run, feats in sorted(order.items()):
        label = record["runs"][run]["label"]
        for f in feats:
            ids.add(node_id(run, f))
            href = hrefs.get(run)
            graph.nodes.append({"id": node_id(run, f), "run": run, "feature": f, "label": f"{label} #{f}",
                                "tokens": tokens.get((run, f), ""), "x": run,
                                "y": round(height[(run, f)] * (rows - 1), 3),
                                "href": None if href is None else f"{href}#feature-{f}"})
    for e in effect:
        graph.edges.append({"source": node_id(e["source_run"], e["source"]),
                            "target": node_id(e["target_run"], e["target"]), "kind": "effect",
                            "value": e["value"], "fraction": e.get("fraction"), "cosine": e.get("cosine"),
                            "width": round(0.5 + (max_width - 0.5) * abs(e["value"]) / top, 3)})
    for e in record["edges"]:
        if e["kind"] == "cosine" and node_id(e["source_run"], e["source"]) in ids \
                and node_id(e["target_run"], e["target"]) in ids:
            graph.edges.append({"source": node_id(e["source_run"], e["source"]),
                                "target": node_id(e["target_run"], e["target"]), "kind": "cosine",
                                "value": e["value"], "fraction": None, "cosine": e["value"],
                                "width": round(0.5 + 2.5 * max(e["value"], 0.0), 3)})
    return graph


def write_png(graph: Graph, path: Path, title: str = "") -> Path:
    """A PNG of the effect edges: one column per run, edge width = |effect| (orange: the source excites the
    target; blue: it inhibits it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max((n["y"] for n in graph.nodes), default=0) + 1
    n_cols = max(len(graph.columns), 2)
    fig, ax = plt.subplots(figsize=(4.2 * n_cols, max(3.0, 0.32 * rows + 1.2)), dpi=110)
    pos = {n["id"]: (n["x"] * 3.0, -n["y"]) for n in graph.nodes}
    for e in graph.edges:
        if e["kind"] != "effect":
            continue
        (x0, y0), (x1, y1) = pos[e["source"]], pos[e["target"]]
        ax.plot([x0, x1], [y0, y1], color="tab:orange" if e["value"] > 0 else "tab:blue",
                linewidth=e["width"], alpha=0.55, solid_capstyle="round", zorder=1)
    for n in graph.nodes:
        x, y = pos[n["id"]]
        ax.scatter([x], [y], s=28, color="black", zorder=2)
        last = n["x"] == len(graph.columns) - 1
        text = f"#{n['feature']}" + (f"  {n['tokens']}" if n["tokens"] else "")
        if last:
            ax.text(x + 0.08, y, text, va="center", ha="left", fontsize=7.5)
        else:
            ax.text(x - 0.08, y, text, va="center", ha="right", fontsize=7.5)
    for c, label in enumerate(graph.columns):
        ax.text(c * 3.0, 1.0, label, ha="center", va="bottom", fontsize=10, fontweight="bold")
    ax.set_xlim(-2.6, 3.0 * (len(graph.columns) - 1) + 2.6)
    ax.set_ylim(-rows, 1.8)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return save_png(fig, path)


def save_png(fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG atomically (never a half-written file) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def _js(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def write_html(graph: Graph, path: Path, title: str, table_rows: list[dict],
               layer_profile: dict | None = None) -> Path:
    """The interactive page: SVG graph (hover an edge or node for its numbers, click a node to open its
    dashboard page, toggle the cosine matches), a table of the strongest edges and, given ``layer_profile``
    ({label, layers, counts, n_latents, shared_above, figure, table}: links relative to the page), a section with
    a crosscoder's latents per layer and its layer-profile figure."""
    page = (_HERE / "relations_page.html").read_text()
    data = {"title": title, "nodes": graph.nodes, "edges": graph.edges, "columns": graph.columns,
            "table": table_rows, "layer_profile": layer_profile}
    return write_text(Path(path), page.replace("/*DATA*/", f"var DATA = {_js(data)};"))


def relative_href(from_dir: Path, target: Path | str | None) -> str | None:
    """A link from a page in ``from_dir`` to ``target`` (a file), relative so the folders can move together."""
    if target is None:
        return None
    return Path(os.path.relpath(Path(target).resolve(), Path(from_dir).resolve())).as_posix()
