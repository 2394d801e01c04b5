"""The real CLI, end to end, in subprocesses (Hydra, Lightning Trainer, offline W&B)."""
import json
import textwrap

import pytest
from helpers import run_cli, run_clis

TINY = ["layer=1", "total_tokens=6000", "train.batch_size=256", "train.eval_every_steps=10",
        "source.context_size=32", "source.eval_contexts=6", "expansion_factor=4"]


def test_default_job_end_to_end(tiny_model, tmp_path):
    out = tmp_path / "run"
    r = run_cli(f"model={tiny_model}", *TINY, f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    for key in ("l0", "explained_variance", "ce_loss_recovered", "ce_clean", "ce_sae", "ce_zero", "kl_div",
                "dead_fraction", "shrinkage", "mse"):
        assert isinstance(m[key], float), key
    assert (m["arch"], m["layer"], m["site"], m["penalty"]) == ("topk", 1, "resid_post", "none")
    assert m["steps"] == 6000 // 256 and m["d_sae"] == 4 * 32
    assert m["l0"] == pytest.approx(32) and m["explained_variance"] <= 1.0  # the default arch: TopK, k = 32
    assert m["history"] and m["history"][0]["step"] == 10  # evaluated during training too
    assert "saefw run summary" in r.stdout and "explained_variance" in r.stdout
    for name in ("sae_weights.safetensors", "cfg.json", "config.yaml", "feature_density.png", "csv/metrics.csv",
                 "checkpoints/last.ckpt"):
        assert (out / name).exists(), name
    assert list((out / "wandb").glob("offline-run-*")), "an offline W&B run must be written"
    from saefw.io.saved import load_sae

    sae = load_sae(out)
    assert sae.W_enc.shape == (32, 128) and json.loads((out / "cfg.json").read_text())["metadata"]["hook_layer"] == 1


def test_card_command_and_its_layer_error(tiny_model, tmp_path):
    for r in run_clis([[form, "layer=25", f"model={tiny_model}", f"hydra.run.dir={tmp_path / str(i)}"]
                       for i, form in enumerate(("+arch=gated", "arch=gated"))], cwd=tmp_path):
        assert r.returncode != 0
        assert "Traceback" not in r.stderr + r.stdout
        assert f"error: layer=25 is out of range: {tiny_model} has 4 layers (0-3)" in r.stderr.splitlines()


def test_an_unset_mandatory_key_is_one_error_line_naming_it(tmp_path):
    """A command's own ``???`` key (features' ``run``) read unset: one line naming the key and how to set it, exit 2."""
    r = run_cli(cwd=tmp_path, module="saefw.features")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("error: run is not set (??? in the config: it is mandatory); set it "
                                                 "on the command line: run=<value>")


def test_unknown_arch_lists_registered_ones(tmp_path):
    r = run_cli("arch=nope", cwd=tmp_path)
    assert r.returncode != 0
    assert "Could not find 'arch/nope'" in r.stderr and "l1" in r.stderr and "gated" in r.stderr


def test_help_lists_every_plugin(tmp_path):
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "arch: " in r.stdout and "l1" in r.stdout and "loss_recovered" in r.stdout


def test_local_plugin_and_entry_point_plugin_without_framework_edits(tiny_model, tmp_path):
    # a local plugins/ file: a new arch
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "half_l1.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from saefw.arch.l1 import L1SAE, L1Config
        from saefw.registry import register

        @dataclass
        class HalfConfig(L1Config):
            marker: int = 7

        @register("arch", "half_l1", HalfConfig)
        class HalfL1SAE(L1SAE):
            """An L1 SAE whose decoder output is halved (a throwaway test plugin)."""
            def _decode(self, f):
                return 0.5 * super()._decode(f)
        '''))
    # an installed distribution exposing a `saefw.plugins` entry point: a new evaluator
    site = tmp_path / "site"
    (site / "tokcount").mkdir(parents=True)
    (site / "tokcount" / "__init__.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from saefw.evals.base import Evaluator
        from saefw.registry import register

        @dataclass
        class TokenCountConfig:
            pass

        @register("evaluator", "token_count", TokenCountConfig)
        class TokenCountEvaluator(Evaluator):
            def begin(self, sae, source):
                self.n = 0
            def update(self, x, f, x_hat):
                self.n += x.shape[0]
            def compute(self):
                return {"eval_tokens": float(self.n)}
        '''))
    dist = site / "tokcount-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tokcount\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[saefw.plugins]\ntokcount = tokcount\n")
    out = tmp_path / "run"
    r = run_cli(f"model={tiny_model}", *TINY, "arch=half_l1", "arch.marker=3", "evaluators=[l0,token_count]",
                "wandb.mode=disabled", f"hydra.run.dir={out}", cwd=tmp_path, extra_path=site)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["arch"] == "half_l1" and m["eval_tokens"] == 6 * 31
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["saefw"]["architecture"] == "half_l1" and cfg["metadata"]["saefw"]["arch_config"]["marker"] == 3
    # it changes the decoder, so it must not inherit L1SAE's claim to be SAELens's "standard"
    assert cfg["architecture"] == "half_l1"
    from saefw.io.saved import load_sae
    from saefw.registry import discover

    discover(plugin_dirs=[tmp_path])  # as the CLI does from that working directory
    assert load_sae(out).plugin_name == "half_l1"


def test_evaluator_the_source_cannot_serve_warns_only_when_asked_for(tmp_path):
    synthetic = ["+experiment=synthetic", "total_tokens=4096", "wandb.mode=disabled", "trainer.enable_progress_bar=false"]
    out = tmp_path / "asked"
    r = run_cli(*synthetic, "evaluators=[l0,loss_recovered]", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "evaluator loss_recovered skipped: source=synthetic provides no lm" in r.stdout + r.stderr
    assert set(json.loads((out / "metrics.json").read_text())) >= {"l0"}
