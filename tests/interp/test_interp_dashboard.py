"""The dashboard extensions of relations and explain, rendered by headless Chromium from disk: a feature page shows
its explanation with scores and its strongest cross-layer edges linking to the other run's pages; the index gains
the explanation and score columns; the relations graph page draws every node and edge."""
import json

import pytest
from browser import needs_chromium, rendered_dom
from feature_helpers import TRAIN_ARGS, copy_sae, parse_html, trained_run
from helpers import run_cli, run_clis
from openai_server import chat_model


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("interp-dash")
    up = copy_sae(trained_run(tmp_path_factory, tiny_model), root / "up")
    down = root / "down"
    args = [a if not a.startswith("layer=") else "layer=2" for a in TRAIN_ARGS]
    r = run_cli(f"model={tiny_model}", *args, f"hydra.run.dir={down}", module="saefw", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    for r in run_clis([[f"run={run}", "n_tokens=1000"] for run in (up, down)], module="saefw.features", cwd=root):
        assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(f"runs=[{up},{down}]", f"out={root / 'rel'}", "n_tokens=600", "top_m=6",
                   "effect_k=3", module="saefw.relations", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    relations = json.loads((root / "rel" / "relations.json").read_text())
    fid = relations["pairs"][0]["sources"][0]
    r = run_cli(f"run={up}", "explainer=local",
                   f"explainer.model={chat_model(tiny_model, root / 'chat')}", f"features=[{fid}]",
                   "scorers=[detection,fuzzing]", "n_explain=6", "n_positive=4", "n_negative=4", "wandb.mode=disabled",
                   module="saefw.explain", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    explained = json.loads((up / "explanations" / "explanations.json").read_text())["features"][str(fid)]
    return root, up, down, relations, fid, explained


@needs_chromium
def test_feature_page_shows_the_explanation_and_the_relations(two_layers):
    root, up, down, relations, fid, explained = two_layers
    view = parse_html(rendered_dom(up / "dashboard" / "index.html", f"#feature-{fid}")).find("div", id="feature-view")
    panel = view.find("section", id="slot-explanation").find("section", id="panel-explanation")
    assert panel.find("p", cls="explanation-text").text() == (explained["explanation"] or
                                                              "(the explainer gave no explanation)")
    cells = [c.text() for c in panel.find("table", cls="explanation-scores").find_all("td")]
    det, fuzz = explained["scores"]["detection"], explained["scores"]["fuzzing"]
    assert [float(c) for c in cells] == [round(det["accuracy"], 3), round(det["f1"], 3), round(fuzz["accuracy"], 3),
                                         round(fuzz["f1"], 3)]
    rel = view.find("section", id="slot-relations").find("section", id="panel-relations")
    out = [e for e in relations["edges"] if e["kind"] == "effect" and e["source"] == fid]
    out.sort(key=lambda e: -abs(e["value"]))
    rows = rel.find("table", cls="effect-out").find_all("tr")[1:]
    assert [r.find("a").attrs["href"] for r in rows] == [f"../../down/dashboard/index.html#feature-{e['target']}"
                                                         for e in out]
    assert all(float(r.find_all("td")[1].text()) == pytest.approx(e["value"], rel=6e-3) for r, e in zip(rows, out))  # 3 digits
    assert rel.find("a", cls="relations-graph").attrs["href"] == "../../rel/relations.html"
    # the other end: the target's page lists this feature among its sources, linking back
    target = out[0]["target"]
    page = parse_html(rendered_dom(down / "dashboard" / "index.html", f"#feature-{target}"))
    back = page.find("section", id="panel-relations").find("table", cls="effect-in")
    assert f"../../up/dashboard/index.html#feature-{fid}" in [a.attrs["href"] for a in back.find_all("a")]


@needs_chromium
def test_index_has_explanation_columns_and_the_graph_page_draws_the_edges(two_layers):
    root, up, _, relations, fid, explained = two_layers
    dom = parse_html(rendered_dom(up / "dashboard" / "index.html", "#?tab=all&sort=id&dir=asc"))
    table = dom.find("table", id="feature-table")
    heads = [th.text() for th in table.find_all("th")]
    assert heads[-4:] == ["explanation", "detection F1", "fuzzing F1", "simulation r"]
    row = table.find("tr", data_feature=str(fid))
    cells = [td.text() for td in row.find_all("td")]
    assert cells[-4] == explained["explanation"] and float(cells[-3]) == round(explained["scores"]["detection"]["f1"], 3)
    assert cells[-1] == ""  # simulation did not run
    graph = parse_html(rendered_dom(root / "rel" / "relations.html")).find("svg", id="graph")
    effect = [e for e in relations["edges"] if e["kind"] == "effect"]
    assert len(graph.find_all("line", cls="effect")) == len(effect)  # fewer than graph_edges: all drawn
    nodes = {(e["source_run"], e["source"]) for e in effect} | {(e["target_run"], e["target"]) for e in effect}
    assert len(graph.find_all("g", cls="node")) == len(nodes)
    link = graph.find("g", id=f"node-0-{fid}").find("a")
    assert link.attrs["href"] == f"../up/dashboard/index.html#feature-{fid}"
