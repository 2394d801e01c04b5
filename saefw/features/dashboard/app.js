/* saefw feature dashboard: a static page, no server, no network.
 *
 * Data: data/index.js calls SAEFW.setIndex({...}); data/features_NNNN.js call SAEFW.addChunk(n, {...}) and are
 * loaded on demand with <script> tags (file:// pages may load scripts, not fetch()).
 *
 * Extension points (for other saefw commands; each ships a script in ext/ that index.html includes):
 *   SAEFW.addPanel({id, title, slot, render(fid, element, api)})  slot: "explanation" (above the contexts),
 *       "relations" (after the logit lens and histogram) or "end"; render fills `element` for feature `fid`.
 *   SAEFW.addIndexColumn({id, title, value(fid), searchable})  an extra column in the index (text or number);
 *       searchable columns take part in the search box.
 *   SAEFW.featureHref(fid) the link to a feature's page; SAEFW.tokenText(id) a token's text;
 *   SAEFW.loadScript(src, onload) to load more data on demand.
 */
(function () {
  "use strict";
  var S = window.SAEFW = window.SAEFW || {};
  var state = {index: null, chunks: {}, loading: {}, panels: [], columns: [],
               tab: "live", sortKey: "density", sortDir: -1, query: "", limit: 500};

  S.setIndex = function (data) { state.index = data; };
  S.addChunk = function (n, features) {
    state.chunks[n] = features;
    (state.loading[n] || []).forEach(function (cb) { cb(); });
    delete state.loading[n];
  };
  S.addPanel = function (panel) { state.panels.push(panel); };
  S.addIndexColumn = function (column) { state.columns.push(column); };
  S.featureHref = function (fid) { return "#feature-" + fid; };
  S.tokenText = function (id) {
    if (id < 0) return "";
    var t = state.index.vocab[id];
    return t === undefined ? "<" + id + ">" : t;
  };
  S.loadScript = function (src, onload) {
    var el = document.createElement("script");
    el.src = src;
    el.onload = onload;
    el.onerror = function () { showError("could not load " + src); };
    document.head.appendChild(el);
  };

  function h(tag, attrs, children) {
    var el = document.createElement(tag);
    for (var k in (attrs || {})) {
      if (k === "text") el.textContent = attrs[k];
      else if (k === "cls") el.className = attrs[k];
      else el.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c) el.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return el;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined || isNaN(x)) return "–";
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 1000 || a < 1e-3) return x.toExponential(2);
    return x.toPrecision(digits || 3);
  }
  function pct(x) { return x === 0 ? "0" : (100 * x < 0.01 ? (100 * x).toExponential(1) : (100 * x).toPrecision(3)) + "%"; }
  function visible(text) { return text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }
  function showError(msg) { document.getElementById("app").prepend(h("p", {cls: "note", text: "error: " + msg})); }
  function kind(fid) {
    var F = state.index.features;
    if (F.fired[fid] === 0) return "dead";
    return F.density[fid] > state.index.dense_threshold ? "dense" : "live";
  }
  function tokList(ids) { return h("span", {cls: "toklist"}, ids.map(function (i) { return h("span", {text: visible(S.tokenText(i))}); })); }

  // ---------- index ----------
  function renderIndex(app) {
    var idx = state.index, F = idx.features, n = F.density.length;
    var counts = {live: 0, dense: 0, dead: 0, all: n};
    for (var i = 0; i < n; i++) counts[kind(i)]++;
    var search = h("input", {type: "search", id: "search", placeholder: "search by token (or #feature)", value: state.query});
    var tabs = ["live", "dense", "dead", "all"].map(function (t) {
      var b = h("button", {cls: "tab" + (state.tab === t ? " active" : ""), "data-tab": t,
                           text: t + " (" + counts[t] + ")"});
      b.onclick = function () { state.tab = t; render(); };
      return b;
    });
    app.appendChild(h("div", {cls: "controls"}, [search].concat(tabs)));
    app.appendChild(h("p", {cls: "note", text: "live: fired on ≤ " + pct(idx.dense_threshold) +
      " of tokens; dense: more; dead: never fired in the " + idx.run.n_tokens.toLocaleString() + " scanned tokens. " +
      "Top tokens: the max-activating tokens of the top contexts; promoted: logit lens W_U·d."}));
    var cols = [{key: "id", title: "feature"}, {key: "density", title: "density", num: true},
                {key: "max", title: "max act", num: true}, {key: "mean", title: "mean act (firing)", num: true},
                {key: "top", title: "top tokens"}, {key: "promoted", title: "promoted"}];
    state.columns.forEach(function (c) { cols.push({key: "ext:" + c.id, title: c.title, ext: c}); });
    var head = h("tr", {}, cols.map(function (c) {
      var th = h("th", {"data-key": c.key, text: c.title});
      if (state.sortKey === c.key) th.className = state.sortDir > 0 ? "sorted-asc" : "sorted-desc";
      th.onclick = function () {
        if (state.sortKey === c.key) state.sortDir = -state.sortDir; else { state.sortKey = c.key; state.sortDir = c.key === "id" ? 1 : -1; }
        render();
      };
      return th;
    }));
    if (location.hash === "" || location.hash === "#" || location.hash.indexOf("#?") === 0) writeIndexHash();
    var rows = matching();
    var table = h("table", {cls: "features", id: "feature-table"}, [h("thead", {}, [head])]);
    var body = h("tbody");
    rows.slice(0, state.limit).forEach(function (fid) {
      var tr = h("tr", {"data-feature": fid}, [
        h("td", {}, [h("a", {href: S.featureHref(fid), text: "#" + fid})]),
        h("td", {cls: "num", text: pct(F.density[fid])}),
        h("td", {cls: "num", text: fmt(F.max[fid])}),
        h("td", {cls: "num", text: fmt(F.mean[fid])}),
        h("td", {}, [tokList(F.top_tokens[fid])]),
        h("td", {}, [tokList(F.promoted[fid].slice(0, 5))])]);
      state.columns.forEach(function (c) { var v = c.value(fid); tr.appendChild(h("td", {text: v === null || v === undefined ? "" : String(v)})); });
      body.appendChild(tr);
    });
    table.appendChild(body);
    app.appendChild(h("p", {cls: "note", id: "row-count", text: rows.length > state.limit ?
      "showing " + state.limit + " of " + rows.length + " features (refine the search to see others)" : rows.length + " features"}));
    app.appendChild(table);
    search.oninput = function () { state.query = search.value; render(); var s = document.getElementById("search"); s.focus(); s.setSelectionRange(s.value.length, s.value.length); };
  }

  function matching() {
    var F = state.index.features, n = F.density.length, q = state.query.trim().toLowerCase(), out = [];
    var idq = /^#?\d+$/.test(q) ? parseInt(q.replace("#", ""), 10) : null;
    for (var i = 0; i < n; i++) {
      if (state.tab !== "all" && kind(i) !== state.tab) continue;
      if (q && !(i === idq || hasToken(i, q))) continue;
      out.push(i);
    }
    var key = state.sortKey, dir = state.sortDir;
    var val = function (i) {
      if (key === "id") return i;
      if (key === "density") return F.density[i];
      if (key === "max") return F.max[i];
      if (key === "mean") return F.mean[i];
      if (key === "top") return S.tokenText(F.top_tokens[i][0] === undefined ? -1 : F.top_tokens[i][0]);
      if (key === "promoted") return S.tokenText(F.promoted[i][0]);
      var col = state.columns.filter(function (c) { return "ext:" + c.id === key; })[0];
      var v = col ? col.value(i) : null;
      return v === null || v === undefined ? "" : v;
    };
    out.sort(function (a, b) { var x = val(a), y = val(b); return x < y ? -dir : x > y ? dir : a - b; });
    return out;
  }

  function hasToken(fid, q) {
    var F = state.index.features, lists = [F.top_tokens[fid], F.promoted[fid]];
    for (var l = 0; l < lists.length; l++)
      for (var j = 0; j < lists[l].length; j++)
        if (S.tokenText(lists[l][j]).toLowerCase().indexOf(q) >= 0) return true;
    for (var c = 0; c < state.columns.length; c++) {
      var col = state.columns[c];
      if (col.searchable) { var v = col.value(fid); if (v !== null && v !== undefined && String(v).toLowerCase().indexOf(q) >= 0) return true; }
    }
    return false;
  }

  // ---------- feature page ----------
  function withFeature(fid, cb) {
    var c = Math.floor(fid / state.index.chunk_size);
    if (state.chunks[c]) return cb(state.chunks[c][fid]);
    var first = !state.loading[c];
    (state.loading[c] = state.loading[c] || []).push(function () { cb(state.chunks[c][fid]); });
    if (first) S.loadScript("data/features_" + ("000" + c).slice(-4) + ".js");
  }

  function renderFeature(app, fid) {
    var idx = state.index, F = idx.features, n = F.density.length;
    if (!(fid >= 0 && fid < n)) { app.appendChild(h("p", {text: "no feature " + fid + " (the SAE has " + n + ")"})); return; }
    var k = kind(fid);
    var view = h("div", {id: "feature-view", "data-feature": fid});
    app.appendChild(view);
    view.appendChild(h("nav", {cls: "feature-nav"}, [h("a", {href: "#", text: "\u2190 index"}),
      fid > 0 ? h("a", {href: S.featureHref(fid - 1), text: "\u2039 #" + (fid - 1)}) : null,
      fid < n - 1 ? h("a", {href: S.featureHref(fid + 1), text: "#" + (fid + 1) + " \u203a"}) : null]));
    var title = h("h2", {text: "Feature " + fid});
    if (k !== "live") title.appendChild(h("span", {cls: "badge " + k, text: k}));
    view.appendChild(title);
    view.appendChild(h("div", {cls: "stats"}, [
      stat("density", pct(F.density[fid]) + " (" + F.fired[fid].toLocaleString() + " of " + idx.run.n_tokens.toLocaleString() + " tokens)"),
      stat("max activation", fmt(F.max[fid])), stat("mean activation where firing", fmt(F.mean[fid])),
      stat("mean activation (all tokens)", fmt(F.mean_all[fid]))]));
    var slots = {};
    ["explanation"].forEach(function (s) { slots[s] = view.appendChild(h("section", {cls: "slot", id: "slot-" + s})); });
    var body = view.appendChild(h("div", {id: "feature-body"}));
    ["relations", "end"].forEach(function (s) { slots[s] = view.appendChild(h("section", {cls: "slot", id: "slot-" + s})); });
    state.panels.forEach(function (p) {
      var el = h("section", {cls: "panel ext", id: "panel-" + p.id}, [h("h3", {text: p.title})]);
      (slots[p.slot] || slots.end).appendChild(el);
      try { p.render(fid, el, S); } catch (e) { el.appendChild(h("p", {cls: "note", text: "panel error: " + e})); }
    });
    withFeature(fid, function (d) { renderFeatureBody(body, fid, d); });
  }

  function stat(label, value) { return h("div", {}, [h("b", {text: value}), label]); }

  function renderFeatureBody(body, fid, d) {
    var idx = state.index, F = idx.features, maxAct = F.max[fid];
    if (!d || !d.top.length) {
      body.appendChild(h("section", {cls: "panel", id: "top-contexts"}, [h("h3", {text: "Top activations"}),
        h("p", {cls: "note", text: "This feature never fired in the " + idx.run.n_tokens.toLocaleString() + " scanned tokens (dead)."})]));
    } else {
      body.appendChild(h("section", {cls: "panel", id: "top-contexts"}, [
        h("h3", {text: "Top activations (" + d.top.length + " contexts; max token outlined, shading \u221d activation)"})]
        .concat(d.top.map(function (c) { return context(c, maxAct); }))));
      var qs = h("section", {cls: "panel", id: "quantile-samples"}, [h("h3", {text: "Samples across activation quantiles"})]);
      for (var r = d.quantiles.length - 1; r >= 0; r--) {
        var q = d.quantiles[r];
        var box = h("div", {cls: "range", "data-range": r}, [h("h4", {text: "range " + (r + 1) + " of " + d.quantiles.length +
          " (" + Math.round(100 * r / d.quantiles.length) + "\u2013" + Math.round(100 * (r + 1) / d.quantiles.length) +
          "% of firings): activation " + fmt(q.lo) + " \u2013 " + fmt(q.hi)})]);
        q.samples.forEach(function (c) { box.appendChild(context(c, maxAct)); });
        if (!q.samples.length) box.appendChild(h("p", {cls: "note", text: "no sample in this range"}));
        qs.appendChild(box);
      }
      body.appendChild(qs);
    }
    if (d && d.lens) body.appendChild(lensPanel(d.lens));
    if (d && d.hist) body.appendChild(histPanel(d.hist, F.fired[fid]));
  }

  function context(c, maxAct) {
    // c = [value, context row, position, token ids, activations]; the max token is at index window.before
    var ids = c[3], acts = c[4], mark = state.index.window.before;
    var text = h("span", {cls: "ctx-text"});
    for (var j = 0; j < ids.length; j++) {
      if (ids[j] < 0) continue;
      var a = acts[j], span = h("span", {cls: "tok" + (j === mark ? " max" : ""), text: visible(S.tokenText(ids[j]))});
      if (a > 0) {
        span.style.backgroundColor = "rgba(249, 115, 22, " + Math.min(1, 0.08 + 0.92 * a / maxAct).toFixed(3) + ")";
        span.setAttribute("data-act", a);
        span.title = "activation " + fmt(a, 4);
      }
      text.appendChild(span);
    }
    return h("div", {cls: "ctx", "data-context": c[1], "data-position": c[2]}, [h("span", {cls: "ctx-val", text: fmt(c[0])}), text]);
  }

  function lensPanel(lens) {
    // lens = {promoted: [[token id, W_U·d value], ...], suppressed: [...]}
    function table(pairs, cls) {
      return h("table", {}, pairs.map(function (p) {
        return h("tr", {}, [h("td", {cls: "t", text: visible(S.tokenText(p[0]))}), h("td", {cls: cls, text: (p[1] > 0 ? "+" : "") + fmt(p[1])})]);
      }));
    }
    // a transcoder's decoder rows live in the site it writes (its output), not the one it reads
    var out = state.index && state.index.run.hook_name_out;
    var title = "Logit lens (W_U \u00b7 d" + (out ? " of the output direction at " + out : "") + ", no final norm)";
    return h("section", {cls: "panel", id: "logit-lens"}, [h("h3", {text: title}),
      h("div", {cls: "lens"}, [h("div", {}, [h("p", {cls: "note", text: "promoted"}), table(lens.promoted, "pos")]),
                               h("div", {}, [h("p", {cls: "note", text: "suppressed"}), table(lens.suppressed, "neg")])])]);
  }

  function histPanel(hist, fired) {
    var W = 640, H = 150, pad = 28, counts = hist.counts, nb = counts.length;
    var top = Math.max.apply(null, counts.concat([1]));
    var ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", W); svg.setAttribute("height", H + pad);
    var bw = (W - 2 * pad) / nb;
    counts.forEach(function (c, j) {
      var r = document.createElementNS(ns, "rect"), bh = (H - 10) * c / top;
      r.setAttribute("x", pad + j * bw); r.setAttribute("y", H - bh); r.setAttribute("width", Math.max(1, bw - 1)); r.setAttribute("height", bh);
      var t = document.createElementNS(ns, "title");
      t.textContent = fmt(hist.max * j / nb) + "\u2013" + fmt(hist.max * (j + 1) / nb) + ": ~" + Math.round(c) + " tokens";
      r.appendChild(t); svg.appendChild(r);
    });
    [[pad, "0"], [W - pad, fmt(hist.max)]].forEach(function (p) {
      var t = document.createElementNS(ns, "text"); t.setAttribute("x", p[0]); t.setAttribute("y", H + 14);
      t.setAttribute("text-anchor", "middle"); t.textContent = p[1]; svg.appendChild(t);
    });
    var yl = document.createElementNS(ns, "text"); yl.setAttribute("x", 2); yl.setAttribute("y", 10); yl.textContent = Math.round(top);
    svg.appendChild(yl);
    return h("section", {cls: "panel hist", id: "histogram"}, [h("h3", {text: "Activation histogram (tokens where it fires)"}), svg,
      h("p", {cls: "note", text: hist.sampled < fired ? "estimated from a uniform sample of " + hist.sampled + " of its " + fired.toLocaleString() + " firing tokens" : "all " + fired.toLocaleString() + " firing tokens"})]);
  }

  // ---------- routing ----------
  function render() {
    var app = document.getElementById("app");
    app.innerHTML = "";
    if (!state.index) { showError("data/index.js did not load"); return; }
    var m = /^#feature-(\d+)$/.exec(location.hash);
    if (m) renderFeature(app, parseInt(m[1], 10)); else renderIndex(app);
  }

  // the index view's state in the URL: #?q=<search>&sort=<id|density|max|mean|...>&dir=<asc|desc>&tab=<live|dense|dead|all>
  function readIndexHash() {
    if (location.hash.indexOf("#?") !== 0) return;
    var p = new URLSearchParams(location.hash.slice(2));
    if (p.has("q")) state.query = p.get("q");
    if (p.has("sort")) state.sortKey = p.get("sort");
    if (p.has("dir")) state.sortDir = p.get("dir") === "asc" ? 1 : -1;
    if (p.has("tab")) state.tab = p.get("tab");
  }
  function writeIndexHash() {
    var p = new URLSearchParams({q: state.query, sort: state.sortKey, dir: state.sortDir > 0 ? "asc" : "desc", tab: state.tab});
    history.replaceState(null, "", "#?" + p.toString());
  }

  S.start = function () {
    if (state.index) {
      var r = state.index.run;
      document.getElementById("title").textContent = "SAE features \u2014 " + r.model + " " + (r.hooks || r.hook_name);
      document.getElementById("run").textContent = r.d_sae + " features \u00b7 " + r.n_tokens.toLocaleString() +
        " tokens of " + r.corpus + " (" + r.split + ") \u00b7 " + r.folder;
    }
    window.addEventListener("hashchange", function () { readIndexHash(); render(); window.scrollTo(0, 0); });
    readIndexHash();
    render();
  };
})();
