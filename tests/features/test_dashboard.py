"""The features command through the real CLI, and its dashboard rendered by headless Chromium from disk."""
import re

import pytest
import torch
from browser import needs_chromium, rendered_dom
from feature_helpers import copy_sae, parse_html, trained_run
from helpers import run_cli

from saefw.errors import SaefwError
from saefw.features import feature_store as store
from saefw.features.dashboard import add_extension

SHADE = re.compile(r"background-color:\s*rgba?\(249, 115, 22(?:, ([0-9.]+))?\)")


def alpha(span) -> float | None:
    """The opacity of a token's activation shading (None: not shaded); Chromium writes alpha 1 as rgb()."""
    m = SHADE.search(span.attrs.get("style", ""))
    return None if m is None else float(m[1] or 1.0)


@pytest.fixture(scope="module")
def dash(tmp_path_factory, tiny_model):
    run = copy_sae(trained_run(tmp_path_factory, tiny_model), tmp_path_factory.mktemp("dash") / "run")
    r = run_cli(f"run={run}", "n_tokens=1000", "dashboard.chunk_size=32", cwd=run.parent, module="saefw.features")
    assert r.returncode == 0, r.stderr[-3000:]
    from transformers import AutoTokenizer

    return run, r, store.load(run), AutoTokenizer.from_pretrained(str(tiny_model))


def test_cli_writes_the_store_and_a_self_contained_dashboard(dash):
    run, r, data, _ = dash
    assert "saefw features" in r.stdout and f"dashboard       {run / 'dashboard' / 'index.html'}" in r.stdout
    assert "scanning features" in r.stderr  # the progress bar
    for name in ("meta.json", "tokens.safetensors", "stats.safetensors", "top.safetensors",
                 "quantiles.safetensors", "logit_lens.safetensors"):
        assert (run / "features" / name).is_file(), name
    dash_dir = run / "dashboard"
    assert sorted(p.name for p in (dash_dir / "data").iterdir()) == [
        "features_0000.js", "features_0001.js", "features_0002.js", "features_0003.js", "index.js"]
    page = (dash_dir / "index.html").read_text()
    # no server, no network: no external scripts, styles or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "@import" not in page
    assert re.findall(r'<script src="([^"]+)"', page) == ["data/index.js"]
    assert not (run.parent / "outputs").exists()  # the command writes only into the run directory
    assert data.meta["scan"]["n_tokens"] == 33 * 31


@needs_chromium
def test_feature_page_shows_highlighted_contexts(dash):
    run, _, data, tok = dash
    density = data.stats["density"]
    live = [i for i in range(data.d_sae) if 0 < density[i] <= data.meta["dense_threshold"]
            and (data.top["context"][i] >= 0).sum() >= 10]
    fid = live[len(live) // 2]
    dom = parse_html(rendered_dom(run / "dashboard" / "index.html", f"#feature-{fid}"))
    view = dom.find("div", id="feature-view")
    assert view.attrs["data-feature"] == str(fid) and f"Feature {fid}" in view.find("h2").text()
    contexts = view.find("section", id="top-contexts").find_all("div", cls="ctx")
    assert len(contexts) == 10  # dashboard.contexts
    for slot, ctx in enumerate(contexts):
        c, p = int(data.top["context"][fid, slot]), int(data.top["position"][fid, slot])
        assert (ctx.attrs["data-context"], ctx.attrs["data-position"]) == (str(c), str(p))
        marked = ctx.find_all("span", cls="max")
        assert len(marked) == 1  # the max-activating token, marked once
        assert marked[0].text() == tok.decode([int(data.tokens[c, p])])
        assert float(marked[0].attrs["data-act"]) == pytest.approx(float(data.top["value"][fid, slot]), rel=1e-3)
        assert alpha(marked[0]) > 0.08 and (slot > 0 or alpha(marked[0]) == 1.0)  # the overall max: full shade
        shaded = [s for s in ctx.find_all("span", cls="tok") if alpha(s) is not None]
        assert shaded and all(float(s.attrs["data-act"]) > 0 for s in shaded)
        unshaded = [s for s in ctx.find_all("span", cls="tok") if alpha(s) is None]
        assert all("data-act" not in s.attrs for s in unshaded)
        # shading grows with activation
        pairs = sorted((float(s.attrs["data-act"]), alpha(s)) for s in shaded)
        assert all(a1 <= a2 for (_, a1), (_, a2) in zip(pairs, pairs[1:]))
    ranges = view.find("section", id="quantile-samples").find_all("div", cls="range")
    assert len(ranges) == 5 and all(r.find_all("div", cls="ctx") for r in ranges)
    lens = view.find("section", id="logit-lens")
    assert tok.decode([int(data.logit_lens["promoted_ids"][fid, 0])]) in lens.text()
    assert view.find("section", id="histogram").find_all("rect")
    assert view.find("section", id="slot-explanation") and view.find("section", id="slot-relations")


@needs_chromium
def test_index_sorts_filters_and_searches(dash):
    run, _, data, tok = dash
    page = run / "dashboard" / "index.html"
    dens, mx = data.stats["density"], data.stats["max_act"]
    thr = data.meta["dense_threshold"]
    live = [i for i in range(data.d_sae) if 0 < dens[i] <= thr]

    def rows(fragment):
        return [int(tr.attrs["data-feature"]) for tr in
                parse_html(rendered_dom(page, fragment)).find("table", id="feature-table").find_all("tr")
                if "data-feature" in tr.attrs]

    by_density = rows("")  # default: live features, densest first
    assert sorted(by_density) == live
    assert [float(dens[i]) for i in by_density] == sorted((float(dens[i]) for i in live), reverse=True)
    by_max = rows("#?sort=max&dir=desc")  # the page holds 6 significant digits: equal within that
    assert sorted(by_max) == live
    assert all(mx[a] >= mx[b] * (1 - 1e-5) for a, b in zip(by_max, by_max[1:]))
    assert rows("#?tab=dense") == sorted(data.dense, key=lambda i: -float(dens[i]))
    word = tok.decode([int(data.logit_lens["promoted_ids"][live[0], 0])])
    found = rows(f"#?q={word}&tab=all")
    assert live[0] in found and len(found) < data.d_sae


@needs_chromium
def test_extensions_add_panels_and_columns_and_survive_a_rerun(dash, tiny_model):
    run, _, data, _ = dash
    dash_dir = run / "dashboard"
    add_extension(dash_dir, "relations", """
        SAEFW.addPanel({id: "rel", title: "Relations", slot: "relations",
                        render: function (fid, el, api) { el.appendChild(document.createTextNode("next: " + api.featureHref(fid + 1))); }});
        SAEFW.addIndexColumn({id: "expl", title: "Explanation", searchable: true,
                              value: function (fid) { return fid === 7 ? "mentions rivers" : ""; }});
    """)
    dom = parse_html(rendered_dom(dash_dir / "index.html", "#feature-3"))
    assert "next: #feature-4" in dom.find("section", id="slot-relations").find("section", id="panel-rel").text()
    index = parse_html(rendered_dom(dash_dir / "index.html", "#?q=rivers&tab=all"))
    table = index.find("table", id="feature-table")
    assert "Explanation" in table.find("thead").text()
    assert [tr.attrs["data-feature"] for tr in table.find("tbody").find_all("tr")] == ["7"]
    # a rerun of the command (the store is reused) rewrites the dashboard and keeps the extension
    r = run_cli(f"run={run}", "n_tokens=1000", "dashboard.chunk_size=32", cwd=run.parent, module="saefw.features")
    assert r.returncode == 0 and "stored scan reused" in r.stdout
    assert '<script src="ext/relations.js">' in (dash_dir / "index.html").read_text()
    with pytest.raises(SaefwError, match="extension name"):
        add_extension(dash_dir, "../evil", "")
    assert torch.equal(store.load(run).tokens, data.tokens)
