"""The synthetic preset end to end: the real CLI recovers the known features; the preset composes with every arch."""
import json

import pytest
from helpers import REPO, run_cli
from hydra import compose, initialize_config_dir

from saefw.registry import discover, names
from saefw.training.config import register_schema


def test_cli_l1_recovers_synthetic_features(tmp_path):
    out = tmp_path / "run"
    # fixed λ = 2 for 200k tokens (~200 steps, a few seconds of training): mmcs 0.99
    r = run_cli("+experiment=synthetic", "arch=l1", "sparsity.adapt=false", "penalty.coefficient=2", "total_tokens=200000",
                "wandb.mode=disabled", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}",
                cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["source"] == "synthetic" and m["d_in"] == 64 and m["d_sae"] == 512 and m["layer"] is None
    assert m["mmcs"] >= 0.95, m
    assert m["frac_recovered"] >= 0.9, m
    assert m["tokens"] >= 200000 - 1024
    meta = json.loads((out / "cfg.json").read_text())["metadata"]
    assert meta["source"] == "synthetic" and meta["n_features"] == 256 and meta["feature_seed"] == 0
    assert out.name == "run" and m["layer"] is None  # no layer/site for a source without a model


def test_lm_keys_with_a_non_lm_source_are_an_error(tmp_path):
    r = run_cli("+experiment=synthetic", "layer=99", "site=foo", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: layer=99, site=foo: source=synthetic reads no language model" in r.stderr


@pytest.mark.parametrize("arch", ["l1", "gated", "topk", "jumprelu", "batchtopk"])
def test_preset_composes_with_arch(arch):
    register_schema()
    discover()
    assert arch in names("arch")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=synthetic", f"arch={arch}"])
    assert cfg.source.name == "synthetic" and cfg.arch.name == arch
    assert sorted(cfg.evaluators) == sorted(["l0", "reconstruction", "dead_features", "shrinkage", "ground_truth"])
    assert cfg.evaluators.ground_truth.threshold == 0.9
    assert cfg.wandb.mode == "offline"
    assert cfg.source.d == 64 and cfg.source.n_features == 256 and cfg.source.target_l0 == 5.0
