"""Dead and dense features are listed apart, on a hand-built SAE whose answer is known."""
import torch
from browser import CHROMIUM, rendered_dom
from feature_helpers import all_activations, features_cfg, parse_html
from helpers import set_params

from saefw.features import feature_store as store
from saefw.features.command import features
from saefw.features.firing import dead_and_dense
from saefw.io.saved import load_sae, save_sae
from saefw.lm.corpus import Corpus, split_documents
from saefw.lm.model import LanguageModel
from saefw.registry import build, discover


def test_dead_and_dense_on_a_constructed_sae(tiny_model, tmp_path):
    discover()
    lm = LanguageModel(str(tiny_model), layer=1, site="resid_post")
    torch.manual_seed(0)
    sae = build("arch", {"name": "l1"}, d_in=32, d_sae=6)
    W_enc = torch.randn(32, 6)
    W_enc[:, 1] = 0  # feature 1 reads nothing and has a positive bias: it fires on every token
    # features 2-5 fire on about 60 %, 20 %, 5 %, 1 % of the held-out tokens: biases at those quantiles of W_enc·x
    heldout = split_documents(Corpus("factbook").documents(), 0.05, heldout=True)
    x = lm.activations(lm.contexts(heldout, 32)[:20])[:, 1:].reshape(-1, 32)
    b_enc = torch.tensor([-1e4, 1.0, 0.0, 0.0, 0.0, 0.0])  # feature 0 can never fire
    for j, target in zip(range(2, 6), (0.6, 0.2, 0.05, 0.01)):
        b_enc[j] = -torch.quantile(x @ W_enc[:, j], 1 - target)
    set_params(sae, W_enc=W_enc, b_enc=b_enc, b_dec=torch.zeros(32), W_dec=torch.randn(6, 32))
    save_sae(sae, tmp_path, {"model_name": str(tiny_model), "hook_layer": 1, "site": "resid_post",
                             "hook_name": "blocks.1.hook_resid_post", "context_size": 32, "dataset_path": "factbook"})
    summary = features(features_cfg(tmp_path, n_tokens=620, dense_threshold=0.3))
    data = store.load(tmp_path)

    f = all_activations(lm, load_sae(tmp_path), data.tokens)
    density = (f[:, 1:] > 0).float().mean((0, 1))
    assert density[0] == 0 and density[1] == 1
    expected_dense = [i for i in range(6) if density[i] > 0.3]
    assert expected_dense == [1, 2]  # the case has live, dense and dead features
    assert data.dead == [0] and data.dense == expected_dense
    assert (summary["dead"], summary["dense"]) == (1, len(expected_dense))
    assert (data.top["context"][0] == -1).all() and data.stats["max_act"][0] == 0  # no contexts, not dropped
    assert data.logit_lens["promoted_ids"].shape[0] == 6  # every feature keeps its logit lens

    if CHROMIUM:  # the dashboard lists them apart and still gives the dead feature a page
        page = tmp_path / "dashboard" / "index.html"
        dead_rows = parse_html(rendered_dom(page, "#?tab=dead")).find("table", id="feature-table").find("tbody")
        assert [tr.attrs["data-feature"] for tr in dead_rows.find_all("tr")] == ["0"]
        dense_tab = parse_html(rendered_dom(page, "#?tab=dense")).find("button", data_tab="dense")
        assert dense_tab.text() == "dense (2)"
        view = parse_html(rendered_dom(page, "#feature-0")).find("div", id="feature-view")
        assert view.find("span", cls="dead").text() == "dead"
        assert "never fired in the 620 scanned tokens" in view.find("section", id="top-contexts").text()
        assert view.find("section", id="logit-lens").find_all("tr")

    # a new threshold re-lists without a new scan
    again = features(features_cfg(tmp_path, n_tokens=620, dense_threshold=0.9))
    assert again["reused"] and store.load(tmp_path).dense == [i for i in range(6) if density[i] > 0.9]


def test_dead_and_dense_thresholds():
    fired = torch.tensor([0, 10, 11, 100, 0])
    assert dead_and_dense(fired, 100, 0.1) == ([0, 4], [2, 3])
