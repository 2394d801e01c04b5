"""The "Explanation" panel of the feature dashboard and its index columns (a dashboard extension,
``ext/explanations.js``): each explained feature's explanation, its scores and the explainer that wrote it; in the
index, the explanation (searchable) and the detection, fuzzing and simulation scores (sortable)."""
from __future__ import annotations

import json
from pathlib import Path

from saefw.features.dashboard import add_extension
from saefw.interp.results import flat_row

_SCRIPT = r"""(function () {
  "use strict";
  var E = /*DATA*/;
  function num(x) { return x === null || x === undefined ? null : Math.round(x * 1000) / 1000; }
  function cell(tag, text, cls) { var c = document.createElement(tag); c.textContent = text; if (cls) c.className = cls; return c; }
  SAEFW.addPanel({id: "explanation", title: "Explanation", slot: "explanation", render: function (fid, el) {
    var d = E[fid];
    if (!d) { el.appendChild(cell("p", "Not explained yet: python -m saefw.explain run=<this run> features=[" + fid + "]", "note")); return; }
    el.appendChild(cell("p", d.explanation || "(the explainer gave no explanation)", "explanation-text"));
    var t = document.createElement("table"); t.className = "explanation-scores";
    var head = document.createElement("tr"), row = document.createElement("tr");
    [["detection accuracy", d.detection_accuracy], ["detection F1", d.detection_f1], ["fuzzing accuracy", d.fuzzing_accuracy],
     ["fuzzing F1", d.fuzzing_f1], ["simulation r", d.simulation_correlation]].forEach(function (s) {
      if (s[1] === null || s[1] === undefined) return;
      head.appendChild(cell("th", s[0])); row.appendChild(cell("td", String(num(s[1])), "num"));
    });
    t.appendChild(head); t.appendChild(row); el.appendChild(t);
    el.appendChild(cell("p", "by " + d.explainer + " (" + d.model + "); scores: held-out contexts, see explanations/ in the run folder", "note"));
  }});
  SAEFW.addIndexColumn({id: "explanation", title: "explanation", searchable: true, value: function (fid) { return E[fid] ? E[fid].explanation : null; }});
  [["detection_f1", "detection F1"], ["fuzzing_f1", "fuzzing F1"], ["simulation_correlation", "simulation r"]].forEach(function (c) {
    SAEFW.addIndexColumn({id: c[0], title: c[1], value: function (fid) { return E[fid] ? num(E[fid][c[0]]) : null; }});
  });
  var css = document.createElement("style");
  css.textContent = "p.explanation-text{font-size:1.1em;font-style:italic;margin:0.2em 0 0.5em}" +
    "table.explanation-scores th,table.explanation-scores td{padding:1px 14px 1px 0;text-align:left;font-weight:normal}" +
    "table.explanation-scores th{color:#666;font-size:0.9em}";
  document.head.appendChild(css);
})();
"""


def write_explanations_panel(dashboard_dir: Path, results: dict) -> Path:
    """Install (or refresh) the explanation panel in the dashboard at ``dashboard_dir``."""
    data = {fid: flat_row(rec) for fid, rec in results["features"].items()}
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    return add_extension(dashboard_dir, "explanations", _SCRIPT.replace("/*DATA*/", text))
