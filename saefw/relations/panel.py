"""The "Relations" panel of each run's feature dashboard (a dashboard extension, ``ext/relations.js``).

For every feature with a relation: its strongest effect edges out (ablating it changes these features of the
next SAE) and in (ablating these features of the previous SAE changes it), its best decoder-cosine matches in
the next SAE and the previous SAE's features whose best matches include it — each linking to the other run's
dashboard page where that run has one — and a link to the whole graph (``relations.html``).
"""
from __future__ import annotations

import json
from pathlib import Path

from saefw.features.dashboard import add_extension
from saefw.relations.graph import relative_href

_SCRIPT = r"""(function () {
  "use strict";
  var R = /*DATA*/;
  var css = document.createElement("style");
  css.textContent = "table.relations{border-collapse:collapse;margin:0.2em 0 0.6em}" +
    "table.relations th,table.relations td{padding:1px 12px 1px 0;text-align:left;font-weight:normal}" +
    "table.relations th{color:#666;font-size:0.9em}table.relations td.num{text-align:right}";
  document.head.appendChild(css);
  function fmt(x) { return x === null || x === undefined ? "\u2013" : (Math.abs(x) >= 1000 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : x.toPrecision(3)); }
  function link(run, fid, href) {
    var text = R.labels[run] + " #" + fid;
    if (!href) return document.createTextNode(text);
    var a = document.createElement("a"); a.href = href; a.textContent = text; return a;
  }
  function table(cls, head, rows) {
    var t = document.createElement("table"); t.className = "relations " + cls;
    var tr = document.createElement("tr");
    head.forEach(function (h) { var th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
    t.appendChild(tr);
    rows.forEach(function (r) {
      var row = document.createElement("tr");
      var td = document.createElement("td"); td.appendChild(link(r[0], r[1], r[2])); row.appendChild(td);
      r.slice(3).forEach(function (v) { var c = document.createElement("td"); c.className = "num"; c.textContent = fmt(v); row.appendChild(c); });
      t.appendChild(row);
    });
    return t;
  }
  function note(text) { var p = document.createElement("p"); p.className = "note"; p.textContent = text; return p; }
  SAEFW.addPanel({id: "relations", title: "Relations across layers", slot: "relations", render: function (fid, el) {
    var d = R.features[fid] || {};
    var any = false;
    if (d.out && d.out.length) { any = true; el.appendChild(note("Ablating this feature changes (mean drop where the target fired; fraction of its activation):"));
      el.appendChild(table("effect-out", ["target", "effect", "fraction", "cosine"], d.out)); }
    if (d["in"] && d["in"].length) { any = true; el.appendChild(note("Ablating these features changes this one:"));
      el.appendChild(table("effect-in", ["source", "effect", "fraction", "cosine"], d["in"])); }
    if (d.next && d.next.length) { any = true; el.appendChild(note("Most similar decoder directions in the next SAE:"));
      el.appendChild(table("cosine-next", ["feature", "cosine"], d.next)); }
    if (d.prev && d.prev.length) { any = true; el.appendChild(note("Features of the previous SAE whose best decoder matches include this one:"));
      el.appendChild(table("cosine-prev", ["feature", "cosine"], d.prev)); }
    if (!any) el.appendChild(note("No relation recorded for this feature (only the top features by density are ablated)."));
    var p = document.createElement("p"), a = document.createElement("a");
    a.href = R.graph; a.textContent = "the relations graph"; a.className = "relations-graph";
    p.appendChild(document.createTextNode("See ")); p.appendChild(a); p.appendChild(document.createTextNode(" (" + R.runs + ")."));
    el.appendChild(p);
  }});
})();
"""


def panel_data(record: dict, run: int, dashboard_dir: Path, graph_html: Path) -> dict:
    """The panel's data for run ``run`` of ``record``: per feature ``out``/``in`` effect edges and
    ``next``/``prev`` cosine matches as [run, feature, href, numbers...], links relative to ``dashboard_dir``."""
    runs = record["runs"]
    hrefs = {r["index"]: relative_href(dashboard_dir, r["dashboard"]) for r in runs}

    def href(r: int, fid: int):
        return None if hrefs[r] is None else f"{hrefs[r]}#feature-{fid}"

    feats: dict[int, dict] = {}
    for e in record["edges"]:
        s, t = (e["source_run"], e["source"]), (e["target_run"], e["target"])
        if e["kind"] == "effect":
            if s[0] == run:
                feats.setdefault(s[1], {}).setdefault("out", []).append(
                    [t[0], t[1], href(*t), e["value"], e["fraction"], e["cosine"]])
            if t[0] == run:
                feats.setdefault(t[1], {}).setdefault("in", []).append(
                    [s[0], s[1], href(*s), e["value"], e["fraction"], e["cosine"]])
        elif e["kind"] == "cosine":
            if s[0] == run:
                feats.setdefault(s[1], {}).setdefault("next", []).append([t[0], t[1], href(*t), e["value"]])
            if t[0] == run:
                feats.setdefault(t[1], {}).setdefault("prev", []).append([s[0], s[1], href(*s), e["value"]])
    for d in feats.values():
        for key in ("out", "in"):
            if key in d:
                d[key].sort(key=lambda row: -abs(row[3]))
        for key in ("next", "prev"):
            if key in d:
                d[key].sort(key=lambda row: -row[3])
                d[key] = d[key][:5]
    return {"labels": {r["index"]: r["label"] for r in runs}, "graph": relative_href(dashboard_dir, graph_html),
            "runs": " \u2192 ".join(r["label"] for r in runs), "features": feats}


def write_relations_panel(record: dict, run: int, dashboard_dir: Path, graph_html: Path) -> Path:
    """Install the panel in the dashboard at ``dashboard_dir``; returns its index.html."""
    data = json.dumps(panel_data(record, run, dashboard_dir, graph_html), separators=(",", ":"),
                      ensure_ascii=False).replace("</", "<\\/")
    return add_extension(dashboard_dir, "relations", _SCRIPT.replace("/*DATA*/", data))
