"""sparse_probing: latent selection and pooling by hand, separable and shuffled labels, the packaged tasks, bad
settings, the tiny model end to end (a cache hit on the second SAE) and the real CLI."""
import gzip
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from saefw.errors import SaefwError
from saefw.evals.base import run_evaluators
from saefw.evals.sparse_probing import (
    SparseProbingConfig,
    load_task,
    pool,
    sae_accuracies,
    sample_split,
    select_latents,
)
from saefw.lm.corpus import EMBEDDED
from saefw.registry import build, discover
from saefw.sources.base import RunSpec


def test_select_latents_by_hand():
    # class means: class 0 → [1, 0, 2, 5], class 1 → [3, 0, 2, 4], class 2 → [2, 0, 7, 5]
    F = np.array([[1, 0, 2, 5], [1, 0, 2, 5], [3, 0, 2, 4], [3, 0, 2, 4], [2, 0, 6, 5], [2, 0, 8, 5]], float)
    y = np.array([0, 0, 1, 1, 2, 2])
    # spreads: [3−1, 0, 7−2, 5−4] = [2, 0, 5, 1]
    assert select_latents(F, y, 4).tolist() == [2, 0, 3, 1]
    assert select_latents(F, y, 1).tolist() == [2]


def test_pool_averages_latents_after_encoding():
    values = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 1.0], [0.0, 3.0], [0.0, 8.0]])
    offsets = torch.tensor([0, 2, 3, 6])
    torch.testing.assert_close(pool(values, offsets), torch.tensor([[2.0, 1.0], [5.0, 5.0], [0.0, 4.0]]))
    # chunked (a chunk boundary inside a text) and through an encoder: the same means of the encoded rows
    torch.testing.assert_close(pool(values, offsets, encode=lambda v: 2 * v, chunk=4),
                               torch.tensor([[4.0, 2.0], [10.0, 10.0], [0.0, 8.0]]))
    # f(mean x) differs from mean f(x) for a ReLU encoder: that is why token activations are cached, not means
    x = torch.tensor([[2.0], [-2.0]])
    assert pool(torch.relu(x), torch.tensor([0, 2])).item() == 1.0 != torch.relu(x.mean()).item()


def _synthetic(n_per_class=60, classes=4, d=32, seed=0):
    g = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    F = g.random((len(y), d)) * 0.5
    F[:, 7] += y * 2.0  # one latent carries the class
    train = g.random(len(y)) >= 0.3
    return F, y, train


def test_separable_labels_are_found_at_k1_and_shuffled_are_chance():
    F, y, train = _synthetic()
    acc = sae_accuracies(F, y, train, [1, 5])
    assert acc[1] >= 0.95 and acc[5] >= 0.95
    assert select_latents(F[train], y[train], 1).tolist() == [7]
    shuffled = np.random.default_rng(1).permutation(y)
    chance = sae_accuracies(F, shuffled, train, [1, 5])
    assert max(chance.values()) < 0.45  # 4 classes: chance 0.25


def test_packaged_tasks_and_their_classes():
    sources = [json.loads(line)["source"] for line in gzip.open(EMBEDDED["factbook"], "rt")]
    regions = Counter(s.split("/")[0] for s in sources)
    sections = Counter(s.split(":/")[1].split("/")[0] for s in sources)
    assert (len(regions), len(sections)) == (13, 9)
    cfg = SparseProbingConfig(max_per_class=20, min_per_class=20)
    for task, counts in (("factbook_region", regions), ("factbook_section", sections)):
        texts, labels = load_task(task, cfg)
        assert Counter(labels) == counts and len(texts) == len(sources)
        idx, y, train, classes = sample_split(labels, cfg)
        assert classes == sorted(c for c, n in counts.items() if n >= 20)
        assert Counter(y.tolist()) == {c: 20 for c in range(len(classes))}
        assert Counter(y[~train].tolist()) == {c: 6 for c in range(len(classes))}  # round(0.3 · 20) held out
        assert all(labels[i] == classes[c] for i, c in zip(idx, y))
        again = sample_split(labels, cfg)
        assert np.array_equal(idx, again[0]) and np.array_equal(train, again[2])  # seeded


def test_bad_settings_name_the_value(tmp_path):
    discover()
    with pytest.raises(SaefwError, match=r"'nope' is neither a built-in task \(factbook_section, factbook_region\)"):
        load_task("nope", SparseProbingConfig())
    with pytest.raises(SaefwError, match=r"test_fraction=1.5 must be between 0 and 1"):
        build("evaluator", {"test_fraction": 1.5}, name="sparse_probing")
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": f"t {i}", "label": "a"}) + "\n" for i in range(30)))
    with pytest.raises(SaefwError, match=r"1 class\(es\) with >= min_per_class=10"):
        sample_split(load_task(str(one), SparseProbingConfig())[1], SparseProbingConfig())
    with pytest.raises(SaefwError, match="field\\(s\\) 'text', 'topic'"):
        load_task(str(one), SparseProbingConfig(label_field="topic"))


def _labelled_jsonl(path):
    rows = [{"text": f"The {w} is {adj} today.", "label": kind} for kind, words in
            (("animal", ["cat", "dog", "horse", "cow", "sheep", "goat"]), ("city", ["Paris", "Rome", "Oslo", "Lima",
                                                                                    "Cairo", "Delhi"]))
            for w in words for adj in ("here", "there")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluator_on_tiny_model_caches_the_model_part(tiny_model, monkeypatch, tmp_path):
    discover()
    src = build("source", {"name": "hf", "model": str(tiny_model), "layer": 1, "site": "resid_post",
                           "context_size": 12, "eval_contexts": 2}, spec=RunSpec(seed=0, train_tokens=500))
    src.setup()
    calls = []
    orig = src.lm.activations
    monkeypatch.setattr(src.lm, "activations", lambda t: calls.append(1) or orig(t))
    task = _labelled_jsonl(tmp_path / "animals.jsonl")
    ev = build("evaluator", {"tasks": ["factbook_section", str(task)], "max_per_class": 8, "min_per_class": 4,
                             "context_size": 16, "ks": [1, 2, 500]}, name="sparse_probing")
    torch.manual_seed(0)
    sae = build("arch", {"name": "l1"}, d_in=src.d_in, d_sae=64)
    out = run_evaluators(sae, src, [ev])
    n = len(calls)
    for task_name in ("factbook_section", "animals"):
        for key in ("llm_acc", "sae_top_1_acc", "sae_top_2_acc", "sae_top_500_acc"):  # 500 > d_sae: all 64
            v = out[f"sparse_probing_{task_name}_{key}"]
            assert 0 <= v <= 1 and math.isfinite(out[f"sparse_probing_{task_name}_{key}_se"])
    assert out["sparse_probing_sae_top_1_acc"] == pytest.approx(
        (out["sparse_probing_factbook_section_sae_top_1_acc"] + out["sparse_probing_animals_sae_top_1_acc"]) / 2)
    assert out["sparse_probing_llm_acc_se"] == pytest.approx(
        math.hypot(out["sparse_probing_factbook_section_llm_acc_se"], out["sparse_probing_animals_llm_acc_se"]) / 2)
    torch.manual_seed(1)
    other = build("arch", {"name": "l1"}, d_in=src.d_in, d_sae=64)
    run_evaluators(other, src, [ev])
    assert len(calls) == n  # the second SAE reuses the cached activations
    assert len(list(src.eval_store.path.glob("cache-sparse_probing_*.safetensors"))) == 2


def test_cli_run_writes_sparse_probing(tiny_model, tmp_path):
    from tests.helpers import TINY_RUN, run_cli

    r = run_cli(f"model={tiny_model}", *TINY_RUN, "evaluators=[l0,sparse_probing]",
                "evaluators.sparse_probing.tasks=[factbook_region]", "evaluators.sparse_probing.max_per_class=8",
                "evaluators.sparse_probing.min_per_class=4", "evaluators.sparse_probing.context_size=16",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["sparse_probing_factbook_region_sae_top_5_acc"] <= 1
    assert metrics["sparse_probing_llm_acc"] == metrics["sparse_probing_factbook_region_llm_acc"]


def test_parquet_task_reads_text_and_label_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "topics.parquet"
    pq.write_table(pa.table({"body": ["a cat", "a dog", "  ", "Paris"], "topic": ["pet", "pet", "pet", "city"]}), path)
    texts, labels = load_task(str(path), SparseProbingConfig(text_field="body", label_field="topic"))
    assert (texts, labels) == (["a cat", "a dog", "Paris"], ["pet", "pet", "city"])  # the blank text is skipped
    with pytest.raises(SaefwError, match=r"has no column 'label'; columns: body, topic"):
        load_task(str(path), SparseProbingConfig(text_field="body"))
