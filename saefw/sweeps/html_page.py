"""The trade-off as one interactive, fully offline HTML page: the plots (plotly, its JavaScript inlined: no CDN)
with each point's job, overrides and metrics on hover, then the whole table (failed jobs with their error)."""
from __future__ import annotations

import html
import math
from pathlib import Path

from saefw.app.atomic import write_text
from saefw.sweeps.panels import Panel, panels_for, series_for, subtitle
from saefw.sweeps.tradeoff import Tradeoff, number

PLOT_ID = "tradeoff-plot"
_HOVER_METRICS = ("l0", "ce_loss_recovered", "explained_variance", "ce_delta", "kl_div", "dead_fraction",
                  "shrinkage")
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}
td.text{text-align:left}
tr.failed td{background:#fde8e8}
tr.frontier td:first-child{font-weight:bold}
.note{color:#555;font-size:13px}
"""


def _hover(row: dict) -> str:
    lines = [f"<b>{html.escape(row['group'])}</b> · {html.escape(row['job'])}", html.escape(row["sweep"])]
    if row.get("overrides"):
        lines.append("overrides: " + html.escape(row["overrides"]))
    for m in _HOVER_METRICS:
        v = number(row, m)
        if v is not None:
            se = number(row, f"{m}_se")
            lines.append(f"{m}: {v:.4g}" + (f" ± {se:.2g}" if se is not None else ""))
    marks = [t for t, on in (("Pareto frontier", row["frontier"]), ("Optuna best", row["optuna_best"])) if on]
    if marks:
        lines.append("<i>" + ", ".join(marks) + "</i>")
    return "<br>".join(lines)


def _figure(table: Tradeoff, panels: list[Panel]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title + (" ↑" if p.maximise else " ↓")
                                                               for p in panels],
                        horizontal_spacing=0.08, vertical_spacing=0.12)
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        for s in series_for(table, panel):
            lx, ly = s.frontier_line()
            fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", line={"color": s.color, "width": 2},
                                     name=s.group, legendgroup=s.group, showlegend=False, hoverinfo="skip"),
                          row=r + 1, col=c + 1)
            fig.add_trace(go.Scatter(
                x=s.x, y=s.y, mode="markers", name=s.group, legendgroup=s.group, showlegend=i == 0,
                marker={"color": s.color, "size": 9, "line": {"color": s.color, "width": 1.5},
                        "symbol": ["circle" if f else "circle-open" for f in s.frontier]},
                error_y={"type": "data", "array": [e if e is not None else 0.0 for e in s.se],
                         "visible": any(e is not None for e in s.se), "thickness": 1, "width": 3},
                hovertext=[_hover(row) for row in s.rows], hoverinfo="text",
                meta=[row["job"] for row in s.rows]), row=r + 1, col=c + 1)
            best = [(x, y) for x, y, row in zip(s.x, s.y, s.rows) if row["optuna_best"]]
            if best:
                fig.add_trace(go.Scatter(x=[b[0] for b in best], y=[b[1] for b in best], mode="markers",
                                         name="Optuna best", legendgroup="optuna", showlegend=False,
                                         marker={"symbol": "star-open", "size": 18, "color": "black"},
                                         hoverinfo="skip"), row=r + 1, col=c + 1)
        fig.update_xaxes(type="log", title_text="L0 (active latents per token)", row=r + 1, col=c + 1)
        fig.update_yaxes(title_text=panel.metric, row=r + 1, col=c + 1)
    fig.update_layout(height=430 * rows, width=560 * cols + 160, template="plotly_white",
                      hoverlabel={"align": "left"}, legend={"title": {"text": "arch"}})
    return fig


def _cell(v) -> tuple[str, bool]:
    if v is None:
        return "", False
    if isinstance(v, bool):
        return ("✓" if v else ""), False
    if isinstance(v, float):
        return (f"{v:.5g}" if math.isfinite(v) else "nan"), False
    return html.escape(str(v)), not isinstance(v, int)


def _table_html(table: Tradeoff) -> str:
    skip = {"run_dir", "overrides"}
    cols = [c for c in table.columns if c not in skip and any(r.get(c) not in (None, "") for r in table.rows)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in table.rows:
        cls = " ".join(k for k, on in (("failed", r["status"] != "ok"), ("frontier", r["frontier"])) if on)
        cells = []
        for c in cols:
            text, is_text = _cell(r.get(c))
            cells.append(f'<td class="text">{text}</td>' if is_text else f"<td>{text}</td>")
        body.append(f'<tr class="{cls}" title="{html.escape(r["run_dir"])}">' + "".join(cells) + "</tr>")
    return f'<table id="tradeoff-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def write_html(table: Tradeoff, path: Path) -> Path:
    """The page: plots (when any job has metrics) and the table. Works from disk with no network."""
    panels = panels_for(table)
    plot = (_figure(table, panels).to_html(full_html=False, include_plotlyjs=True, div_id=PLOT_ID,
                                           config={"displaylogo": False})
            if panels else '<p class="note">No finished job has metrics to plot.</p>')
    title = "saefw trade-off"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>
<body>
<h1>{title}</h1>
<p class="note">{html.escape(subtitle(table))}. Filled markers lie on their arch's Pareto frontier (minimise L0,
maximise the metric; for CE delta and KL, minimise both); hollow markers are dominated; error bars are ± one
standard error where the runs report one. Hover a point for its overrides and metrics.</p>
{plot}
<h2>Jobs</h2>
{_table_html(table)}
</body></html>
"""
    return write_text(path, page)
