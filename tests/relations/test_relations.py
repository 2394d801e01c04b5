"""Relations across layers: decoder cosine against a hand computation, the ablation effect on the tiny Llama with
hand-built SAEs whose answer is known (against a brute-force reference), and the command through the real CLI."""
import itertools
import json
import math

import pytest
import torch
from helpers import read_csv, run_cli
from relation_helpers import DOWN, UP, brute_force_effects, known_pair

from saefw.errors import SaefwError
from saefw.relations.ablation import (
    SourceFiring,
    ablation_effects,
    contribution_vectors,
    plan_forwards,
    select_sources,
    source_firing,
)
from saefw.relations.decoder_cosine import best_matches, cosine_matrix

S = 1 / math.sqrt(2)


def test_decoder_cosine_matches_a_hand_computation():
    up = torch.tensor([[1.0, 0, 0], [0, 2, 0], [1, 1, 0]])
    down = torch.tensor([[1.0, 1, 0], [0, -3, 0], [2, 0, 0], [0, 1, 5]])
    r26 = 1 / math.sqrt(26)
    # cos(a, b) = a·b / (|a||b|), worked out row by row
    want = torch.tensor([[S, 0, 1, 0], [S, -1, 0, r26], [1, -S, S, r26 * S]])
    torch.testing.assert_close(cosine_matrix(up, down), want)
    m = best_matches(up, down, k=2, chunk=2)  # chunked over the rows of `up`
    assert m.indices.tolist() == [[2, 0], [0, 3], [0, 2]]
    torch.testing.assert_close(m.values, torch.tensor([[1, S], [S, r26], [1, S]]))
    with pytest.raises(SaefwError, match="different widths"):
        cosine_matrix(up, torch.ones(2, 4))


def test_plan_packs_rows_with_one_clean_row_per_context_part():
    fires = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    plan = plan_forwards(fires, batch_rows=3)
    got = [(f.context.tolist(), f.source.tolist(), f.clean_row.tolist(), f.counted.tolist()) for f in plan]
    assert got == [([0, 0, 0], [-1, 0, 1], [0, 0, 0], [True, False, False]),
                   ([1], [-1], [0], [True]),
                   ([2, 2, 2], [-1, 0, 1], [0, 0, 0], [True, False, False]),
                   ([2, 2], [-1, 2], [0, 0], [False, False])]  # context 2's second part: its clean row not recounted
    assert sum(len(f.context) for f in plan_forwards(fires, batch_rows=64)) == 3 + 1 + 4
    with pytest.raises(SaefwError, match="batch_rows=1 must be at least 2"):
        plan_forwards(fires, 1)


def test_select_sources_takes_the_densest_live_features():
    firing = SourceFiring(fired=torch.tensor([0, 50, 5, 900, 20]), in_context=torch.zeros(1, 5, dtype=torch.bool),
                          n_tokens=1000)
    assert select_sources(firing, top_m=2, max_density=0.1) == [1, 4]  # 3 is dense (90 %), 0 is dead
    assert select_sources(firing, top_m=10, max_density=1.0) == [3, 1, 4, 2]


@pytest.fixture(scope="module")
def known(tiny_model):
    from saefw.lm.corpus import Corpus, split_documents
    from saefw.lm.model import LanguageModel

    lm = LanguageModel(str(tiny_model), *UP)
    docs = itertools.islice(split_documents(Corpus("factbook").documents(), 0.05, heldout=True), 40)
    contexts = lm.contexts(docs, 32)[:20]
    return lm, contexts, known_pair(lm, contexts)


def test_contribution_vectors_are_the_decoder_rows(known):
    _, _, pair = known
    torch.testing.assert_close(contribution_vectors(pair.up, [4, 0]), pair.up_dirs[[4, 0]])


def test_ablation_effect_finds_the_feature_built_to_read_it(known):
    lm, contexts, pair = known
    firing = source_firing(lm, pair.up, UP, contexts, batch=8, progress=False)
    assert torch.allclose(firing.density, torch.full((6,), 0.2), atol=0.01)  # the biases set 20 % firing
    sources = list(range(6))
    small = ablation_effects(lm, pair.up, UP, pair.down, DOWN, contexts, sources, firing.in_context, batch_rows=4,
                             progress=False)
    big = ablation_effects(lm, pair.up, UP, pair.down, DOWN, contexts, sources, firing.in_context, batch_rows=64,
                           progress=False)
    effect = small.effect()
    # the known answer: up feature 0 writes q_0, down feature 0 reads q_0; nothing else reads or writes it
    assert int(effect[0].abs().argmax()) == 0 and int(effect[:, 0].abs().argmax()) == 0
    others = effect.abs().clone()
    others[0, 0] = 0
    assert effect[0, 0] > 10 * others.max()
    # ablating f_0·q_0 removes most of down feature 0 where it fires (the residual stream carries q_0 on)
    assert small.fraction()[0, 0] > 0.5
    # its magnitude: the independent brute-force computation, one context and one feature at a time
    reference = brute_force_effects(lm.model, pair, contexts)
    torch.testing.assert_close(effect, reference, atol=2e-6, rtol=1e-3)
    torch.testing.assert_close(big.effect(), effect, atol=1e-7, rtol=1e-4)  # batching changes nothing
    assert small.rows > big.rows >= len(contexts)  # small batches split contexts: more clean rows
    assert int(small.target_fired.sum()) == int(big.target_fired.sum())


def test_ablation_refuses_a_downstream_point_that_comes_first(known):
    lm, contexts, pair = known
    firing = source_firing(lm, pair.up, UP, contexts[:2], progress=False)
    with pytest.raises(SaefwError, match="does not come after"):
        ablation_effects(lm, pair.down, DOWN, pair.up, UP, contexts[:2], [0], firing.in_context)


@pytest.fixture(scope="module")
def known_runs(known, tiny_model, tmp_path_factory):
    """The hand-built pair saved as two run directories, as training would record them."""
    from saefw.io.saved import save_sae

    _, _, pair = known
    root = tmp_path_factory.mktemp("known")
    runs = []
    for name, sae, (layer, site) in (("up", pair.up, UP), ("down", pair.down, DOWN)):
        save_sae(sae, root / name, {"model_name": str(tiny_model), "hook_name": f"blocks.{layer}.hook_{site}",
                                    "hook_layer": layer, "site": site, "context_size": 32,
                                    "dataset_path": "factbook", "prepend_bos": True})
        runs.append(root / name)
    return root, runs


def test_relations_cli_writes_the_known_edge_as_the_strongest(known, known_runs):
    from omegaconf import OmegaConf

    from saefw.relations.command import RelationsConfig, held_out_contexts

    lm, _, pair = known
    root, (up, down) = known_runs
    r = run_cli(f"runs=[{up},{down}]", f"out={root / 'rel'}", "n_tokens=620",
                   "features=[0,1,2,3,4,5]", "effect_k=5", "cosine_k=2", "batch_rows=8", module="saefw.relations", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ablating 6 features at 1/resid_post" in r.stderr  # the progress bar
    assert "L1 resid_post #0 -> L2 resid_post #0" in r.stdout
    out = root / "rel"
    record = json.loads((out / "relations.json").read_text())
    assert record["format"] == "saefw.relations/1"
    assert [(x["layer"], x["site"], x["d_sae"]) for x in record["runs"]] == [(1, "resid_post", 6), (2, "resid_post", 5)]
    assert record["pairs"][0]["sources"] == [0, 1, 2, 3, 4, 5] and record["pairs"][0]["n_tokens"] == 620
    effect = [e for e in record["edges"] if e["kind"] == "effect"]
    top = max(effect, key=lambda e: abs(e["value"]))
    assert (top["source"], top["target"], top["rank"]) == (0, 0, 1)
    assert top["cosine"] == pytest.approx(1.0, abs=1e-6)  # down feature 0 reads exactly what up 0 writes
    # the same number as the brute-force reference on the same held-out contexts
    cfg = OmegaConf.structured(RelationsConfig(runs=[str(up), str(down)], out="x", n_tokens=620))
    contexts = held_out_contexts(cfg, lm, "factbook", 32)
    assert contexts.shape == (20, 32)
    reference = brute_force_effects(lm.model, pair, contexts)
    assert top["value"] == pytest.approx(float(reference[0, 0]), rel=1e-3)
    # cosine edges: every up feature's 2 best matches; up 0 → down 0 at cosine 1, the others orthogonal to all
    cosine = [e for e in record["edges"] if e["kind"] == "cosine"]
    assert len(cosine) == 6 * 2
    first = {e["source"]: e for e in cosine if e["rank"] == 1}
    assert first[0]["target"] == 0 and first[0]["value"] == pytest.approx(1.0, abs=1e-6)
    assert all(abs(first[k]["value"]) < 1e-5 for k in range(1, 6))
    rows = read_csv(out / "relations.csv")
    assert len(rows) == len(record["edges"]) and rows[0]["source_hook"] == "blocks.1.hook_resid_post"
    assert {r["kind"] for r in rows} == {"cosine", "effect"}
    assert (out / "relations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "relations.html").read_text()
    assert "var DATA = " in html and "<script src" not in html and "https://" not in html  # offline page


@pytest.mark.parametrize("args, message", [
    (lambda up, down: [f"runs=[{up}]"], "must list at least two run directories"),
    (lambda up, down: [f"runs=[{down},{up}]"], "runs must be in forward-pass order"),
    (lambda up, down: [f"runs=[{up},{down}]", "features=[9]"], "feature=9 is out of range: the SAE has 6 features"),
    (lambda up, down: [f"runs=[{up},{down}]", "split=dev"], "split='dev' is not a split"),
])
def test_bad_requests_are_one_line_errors(known_runs, args, message):
    root, (up, down) = known_runs
    r = run_cli(*args(up, down), f"out={root / 'bad'}", module="saefw.relations", cwd=root)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert any(line.startswith("error: ") and message in line for line in r.stderr.splitlines()), r.stderr
