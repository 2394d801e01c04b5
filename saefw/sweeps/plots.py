"""The trade-off figure as a PNG (matplotlib): one panel per metric against L0 (log x), all jobs as points with
error bars from the ``<metric>_se`` values, and one line per arch through its Pareto frontier."""
from __future__ import annotations

import math
from pathlib import Path

from saefw.app.atomic import atomic_path
from saefw.sweeps.panels import Panel, panels_for, series_for, subtitle
from saefw.sweeps.tradeoff import Tradeoff


def _draw(ax, table: Tradeoff, panel: Panel) -> None:
    from matplotlib.ticker import FuncFormatter

    for s in series_for(table, panel):
        lx, ly = s.frontier_line()
        ax.plot(lx, ly, "-", color=s.color, lw=1.8, label=s.group, zorder=2)
        yerr = [e if e is not None else 0.0 for e in s.se]
        ax.errorbar(s.x, s.y, yerr=yerr if any(yerr) else None, fmt="none", ecolor=s.color, alpha=0.6,
                    capsize=2, lw=1, zorder=1)
        for on in (True, False):
            pts = [(x, y) for x, y, f in zip(s.x, s.y, s.frontier) if f == on]
            if pts:
                ax.scatter(*zip(*pts), s=30, zorder=3, edgecolors=s.color, linewidths=1.5,
                           facecolors=s.color if on else "white")
        best = [(x, y) for x, y, r in zip(s.x, s.y, s.rows) if r.get("optuna_best")]
        if best:
            ax.scatter(*zip(*best), s=140, marker="*", facecolors="none", edgecolors="black", linewidths=1,
                       zorder=4, label="Optuna best")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, 30, 50 rather than 2×10¹
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(panel.metric)
    ax.set_title(panel.title + (" ↑" if panel.maximise else " ↓"), fontsize=10)
    ax.grid(True, which="both", alpha=0.25)


def write_png(table: Tradeoff, path: Path, dpi: int = 110) -> Path | None:
    """Draw every panel of :func:`panels_for` into one figure; None (no file) when no job has metrics to plot.
    Filled markers: on the frontier; hollow: dominated; a star: Optuna's best trial(s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = panels_for(table)
    if not panels:
        return None
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _draw(ax, table, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    for label, face in (("on the frontier", "grey"), ("dominated", "white")):
        uniq[label] = Line2D([], [], ls="none", marker="o", markersize=6, markerfacecolor=face,
                             markeredgecolor="grey")
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=min(len(uniq), 7), frameon=False)
    fig.suptitle(f"Sparsity / fidelity trade-off — {subtitle(table)}", fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if rows == 1 else 0.04, 1, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
