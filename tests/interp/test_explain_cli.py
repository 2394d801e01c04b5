"""``python -m saefw.explain`` through the real CLI: against a real OpenAI-compatible server (``transformers serve``
on 127.0.0.1 serving the tiny Llama as a chat model), with the in-process local explainer, and its error lines."""
import json

import pytest
import torch
from feature_helpers import copy_sae, trained_run
from helpers import read_csv, run_cli, run_clis
from openai_server import chat_model, free_port

from saefw.interp.metrics import binary_scores
from saefw.interp.parsing import parse_labels
from saefw.interp.results import CSV_COLUMNS

SMALL = ["n_explain=6", "n_explain_quantile=2", "n_positive=4", "n_negative=4", "n_sim_positive=2", "n_sim_random=1", "batch_items=4"]


@pytest.fixture(scope="module")
def features_run(tmp_path_factory, tiny_model):
    run = copy_sae(trained_run(tmp_path_factory, tiny_model), tmp_path_factory.mktemp("explain") / "run")
    r = run_cli(f"run={run}", "n_tokens=1000", module="saefw.features", cwd=run.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    from saefw.features import feature_store

    data = feature_store.load(run)
    full = [f for f in range(data.d_sae) if int((data.top["context"][f] >= 0).sum()) >= 15 and f not in data.dense]
    return run, data, full


@pytest.fixture(scope="module")
def openai_result(features_run, openai_server):
    run, data, full = features_run
    url, model = openai_server
    feats = full[:2]
    r = run_cli(f"run={run}", "explainer=openai", f"explainer.base_url={url}",
                   f"explainer.model={model}", "explainer.api_key_env=null", "explainer.concurrency=3",
                   "explainer.price_input_per_mtok=1.0", "explainer.price_output_per_mtok=2.0",
                   f"features=[{feats[0]},{feats[1]}]", *SMALL, module="saefw.explain", cwd=run.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, feats, json.loads((run / "explanations" / "explanations.json").read_text())


def test_explain_with_a_real_openai_compatible_server(features_run, openai_server, openai_result):
    from transformers import AutoTokenizer

    run, data, _ = features_run
    _, model = openai_server
    r, feats, results = openai_result
    assert "explaining 2 features" in r.stderr and "scoring 2 explanations" in r.stderr  # progress bars
    assert f"saefw explain (openai: {model})" in r.stdout
    assert results["format"] == "saefw.explanations/1" and list(results["features"]) == [str(f) for f in feats]
    tok = AutoTokenizer.from_pretrained(str(model))
    prompt_tokens, requests = 0, 0
    for f in feats:
        rec = results["features"][str(f)]
        assert rec["explainer"]["name"] == "openai" and isinstance(rec["explanation"], str)
        assert rec["threshold"] == pytest.approx(0.3 * float(data.top["value"][f, 0]), rel=1e-5)
        ex = rec["examples"]
        assert [len(ex[k]) for k in ("positives", "negatives", "simulation")] == [4, 4, 3]
        # the 6 strongest contexts, then up to 2 quantile samples (fewer if one repeats a top context)
        assert [tuple(e[:2]) for e in ex["explain"][:6]] == [(int(data.top["context"][f, k]),
                                                              int(data.top["position"][f, k])) for k in range(6)]
        assert 6 < len(ex["explain"]) <= 8 and {e[2] for e in ex["explain"][6:]} == {"quantile"}
        assert not {tuple(e[:2]) for e in ex["explain"]} & {tuple(e[:2]) for e in ex["positives"]}
        s = rec["scores"]
        assert s["detection"]["n"] == 8 and s["fuzzing"]["n"] == 8  # 4 + 4 windows; each positive twice
        for name in ("detection", "fuzzing"):
            assert all(0 <= s[name][k] <= 1 for k in ("accuracy", "precision", "recall", "f1"))
        assert -1 <= s["simulation"]["correlation"] <= 1
        transcript = json.loads((run / "explanations" / "transcripts" / f"{f}.json").read_text())
        assert [t["task"] for t in transcript] == ["explanation"] + ["detection"] * 2 + ["fuzzing"] * 2 + \
            ["simulation"] * 3
        assert s["simulation"]["n_tokens"] == sum(len(t["truth"]) for t in transcript if t["task"] == "simulation")
        # the saved scores are the metrics of the saved answers against the saved truths
        for name in ("detection", "fuzzing"):
            parts = [t for t in transcript if t["task"] == name]
            labels = [y for t in parts for y in t["truth"]]
            answers = [a for t in parts for a in parse_labels(t["answer"], len(t["truth"]))]
            assert binary_scores(labels, answers) == s[name]
        for t in transcript:
            prompt_tokens += len(tok.apply_chat_template(t["messages"], add_generation_prompt=True,
                                                         return_dict=True)["input_ids"])
            requests += 1
    usage = results["invocations"][-1]["usage"]
    assert usage["requests"] == requests == 2 * 8
    assert usage["prompt_tokens"] == prompt_tokens  # the server's count, checked with the tokenizer
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6,
                                              rel=1e-4)
    rows = read_csv(run / "explanations" / "scores.csv")
    assert [int(row["feature"]) for row in rows] == feats and list(rows[0]) == list(CSV_COLUMNS)
    tables = list((run / "explanations" / "wandb").glob("offline-run-*/files/media/table/explanations_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == list(CSV_COLUMNS) and [row[0] for row in table["data"]] == feats
    page = (run / "dashboard" / "index.html").read_text()
    assert '<script src="ext/explanations.js"></script>' in page


def test_scorer_labels_match_the_true_activations(features_run, openai_result, tiny_model):
    """Independently of the store: the windows shown as firing contain a firing token, the ones shown as quiet
    contain none (recomputed with the SAE on the model)."""
    from saefw.io.saved import load_sae
    from saefw.lm.model import LanguageModel

    run, data, _ = features_run
    _, feats, results = openai_result
    sae = load_sae(run)
    lm = LanguageModel(str(tiny_model), 1, "resid_post")
    before, after = data.meta["window"]["before"], data.meta["window"]["after"]
    for f in feats:
        transcript = json.loads((run / "explanations" / "transcripts" / f"{f}.json").read_text())
        items = [item for t in transcript if t["task"] == "detection" for item in t["items"]]
        assert sorted(item[3] for item in items) == [0] * 4 + [1] * 4
        for context, position, kind, label in items:
            acts = sae.encode(lm.activations(data.tokens[context:context + 1].long()))[0, :, f]
            if label == 1:
                assert kind in ("top", "quantile") and acts[position] > 0
            else:
                lo, hi = max(1, position - before), position + after + 1
                assert kind == "random" and torch.all(acts[lo:hi] == 0)


def test_a_rerun_with_the_local_explainer_adds_features(features_run, openai_result, tiny_model, tmp_path):
    run, _, full = features_run
    _, feats, _ = openai_result
    local = chat_model(tiny_model, tmp_path / "chat")
    r = run_cli(f"run={run}", "explainer=local", f"explainer.model={local}",
                   f"features=[{full[2]}]", "scorers=[detection]", "wandb.mode=disabled", *SMALL, module="saefw.explain", cwd=run.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((run / "explanations" / "explanations.json").read_text())
    assert list(results["features"]) == [str(f) for f in sorted([*feats, full[2]])]  # merged, in feature order
    new = results["features"][str(full[2])]
    assert new["explainer"]["name"] == "local" and list(new["scores"]) == ["detection"]
    assert len(results["invocations"]) == 2 and results["invocations"][-1]["usage"]["requests"] == 1 + 2
    assert results["invocations"][-1]["usage"]["cost_usd"] is None  # no price for a local model
    assert len(list((run / "explanations" / "wandb").glob("offline-run-*"))) == 1  # wandb.mode=disabled


def test_errors_are_one_line(features_run, tmp_path, monkeypatch):
    run, data, full = features_run
    dead = data.dead[0] if data.dead else None
    monkeypatch.delenv("SAEFW_NO_SUCH_KEY", raising=False)
    cases = [([f"run={run}", "explainer=openai", "explainer.api_key_env=SAEFW_NO_SUCH_KEY", "features=[1]"],
              "error: explainer=openai needs an API key: the environment variable SAEFW_NO_SUCH_KEY is not set"),
             ([f"run={run}", "explainer=openai", f"explainer.base_url=http://127.0.0.1:{free_port()}/v1",
               "explainer.api_key_env=null", "explainer.timeout=2", f"features=[{full[0]}]"],
              "listing the models failed: cannot connect"),
             ([f"run={tmp_path}", "features=[1]"], "no complete feature store"),
             ([f"run={run}", "features=[100000]"], "feature=100000 is out of range"),
             ([f"run={run}", "scorers=[guessing]"], "'guessing' is not a scorer"),
             ([f"run={run}", "explainer=nope"], None)]
    if dead is not None:
        cases.append(([f"run={run}", f"features=[{dead}]"], f"feature {dead} never fired"))
    results = run_clis([args for args, _ in cases], module="saefw.explain", cwd=tmp_path)
    for (args, message), r in zip(cases, results):
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        if message is not None:
            errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()
