"""absorption: a by-hand word score and a planted absorbing latent."""
import numpy as np

from saefw.evals.absorption import AbsorptionConfig, absorption_scores, fit_probes, word_scores


def test_partial_fraction_by_hand():
    cfg = AbsorptionConfig(proj_threshold=0.0)
    W_dec = np.array([[1.0, 0.0], [0.6, 0.8]])
    full, frac = word_scores(np.array([1.3, 0.0]), np.array([1.0, 0.5]), W_dec, np.array([1.0, 0.0]), [0], cfg)
    assert not full and np.isclose(frac, 0.3 / 1.3)


def test_planted_absorption_rate():
    rng = np.random.default_rng(0)
    L, n_tr, n_te, n_abs = 3, 60, 20, 6
    d = L + n_abs + 8
    acts, labels, train = [], [], []
    for k in range(L):
        for i in range(n_tr + n_te):
            x = np.zeros(d)
            x[k] = 1
            x[L + n_abs:] = 0.05 * rng.standard_normal(8)
            if k == 0 and i >= n_tr + n_te - n_abs:
                x[L + (i - (n_tr + n_te - n_abs))] = 1
            acts.append(x), labels.append(k), train.append(i < n_tr)
    acts, labels, train = np.array(acts, np.float32), np.array(labels), np.array(train)
    W_enc = np.zeros((d, L + n_abs))
    W_dec = np.zeros((L + n_abs, d))
    for k in range(L):
        W_enc[k, k] = W_dec[k, k] = 1
    for j in range(n_abs):
        W_enc[L + j, 0] = -10
        W_enc[L + j, L + j] = 1
        W_dec[L + j, 0] = W_dec[L + j, L + j] = 2 ** -0.5
    W, b = fit_probes(acts, labels, train)
    out = absorption_scores(acts, labels, train, W, b, lambda x: np.maximum(x @ W_enc - 0.3, 0), W_dec,
                            AbsorptionConfig())
    assert out["absorption_letters"] == 3
    np.testing.assert_allclose(out["per_letter_rate"], [0.3, 0, 0])


def test_bad_settings_and_no_letters_name_the_problem():
    import pytest

    from saefw.errors import SaefwError
    from saefw.registry import build, discover

    discover()
    with pytest.raises(SaefwError, match=r"test_fraction=1.5 must be between 0 and 1"):
        build("evaluator", {"test_fraction": 1.5}, name="absorption")
    x = np.eye(2, dtype=np.float32)  # no held-out word at all: nothing to score
    with pytest.raises(SaefwError, match="no letter has a held-out word"):
        absorption_scores(x, np.array([0, 1]), np.array([True, True]), np.eye(2, dtype=np.float32),
                          np.zeros(2, np.float32), lambda a: a, np.eye(2), AbsorptionConfig())


def test_evaluator_on_tiny_model(tiny_model, monkeypatch):
    import math

    import torch

    from saefw.evals.base import run_evaluators
    from saefw.registry import build, discover
    from saefw.sources.base import RunSpec

    discover()
    src = build("source", {"name": "hf", "model": str(tiny_model), "layer": 1, "site": "resid_post",
                           "context_size": 12, "eval_contexts": 2}, spec=RunSpec(seed=0, train_tokens=500))
    src.setup()
    torch.manual_seed(0)
    sae = build("arch", {"name": "l1"}, d_in=src.d_in, d_sae=64)
    calls = []
    orig = src.lm.activations
    monkeypatch.setattr(src.lm, "activations", lambda t: calls.append(1) or orig(t))
    ev = build("evaluator", {"max_words": 400, "min_words_per_letter": 5}, name="absorption")
    out = run_evaluators(sae, src, [ev])
    n = len(calls)
    assert out["absorption_letters"] >= 2 and all(math.isfinite(out[k]) for k in
                                                  ("absorption_rate", "absorption_fraction",
                                                   "absorption_split_features"))
    run_evaluators(sae, src, [ev])
    assert len(calls) == n


def test_cli_run_writes_absorption(tiny_model, tmp_path):
    import json

    from tests.helpers import TINY_RUN, run_cli

    r = run_cli(f"model={tiny_model}", *TINY_RUN, "evaluators=[l0,absorption]",
                "evaluators.absorption.max_words=400", "evaluators.absorption.min_words_per_letter=5",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads(next((tmp_path / "run").rglob("metrics.json")).read_text())
    flat = json.dumps(metrics)
    assert "absorption_rate" in flat and "absorption_letters" in flat
