"""``python -m saefw.evaluate``: saefw's evaluators on saved SAEs, SAELens's included."""
import json

import pytest
import torch
from helpers import run_cli
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from saefw.app.cli import conf_dir
from saefw.errors import SaefwError
from saefw.evals.command import carried, evaluate, register_schema

SOURCE = ["source.context_size=32", "source.eval_contexts=6"]


def saelens_sae_for(model, d_in=32, d_sae=64, **meta):
    """A SAELens standard SAE (random weights, decoder ≈ encoderᵀ) hooked to ``model`` at layer 1 resid_post."""
    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = {"model_name": str(model), "hook_name": "blocks.1.hook_resid_post", "context_size": 32, **meta}
    sae = SAE.from_dict(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(**meta)).to_dict())
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in) * 0.1)
        sae.W_enc.copy_(sae.W_dec.T * 2)
        sae.b_enc.copy_(torch.randn(d_sae) * 0.01)
    return sae


def test_cli_evaluates_a_saelens_sae(tiny_model, tmp_path):
    sl = saelens_sae_for(tiny_model)
    sl.save_model(tmp_path / "sae")
    out = tmp_path / "eval"
    r = run_cli(f"sae={tmp_path / 'sae'}", *SOURCE, f"hydra.run.dir={out}", cwd=tmp_path, module="saefw.evaluate")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert (m["arch"], m["model"], m["layer"], m["site"], m["penalty"]) == ("l1", str(tiny_model), 1, "resid_post", "n/a")
    assert m["evaluated_sae"] == str((tmp_path / "sae").resolve()) and m["eval_tokens"] == 6 * 31
    for key in ("l0", "explained_variance", "ce_loss_recovered", "ce_clean", "ce_sae", "ce_zero", "kl_div",
                "dead_fraction_heldout", "shrinkage", "ce_loss_recovered_se", "explained_variance_se"):
        assert isinstance(m[key], float), key
    assert "mmcs" not in m and "skipped" not in r.stdout + r.stderr  # ground_truth: skipped quietly
    assert "saefw evaluation summary" in r.stdout and "held-out tokens" in r.stdout

    # independent computation with SAELens's own forward on the same held-out contexts
    from saefw.lm.model import next_token_ce
    from saefw.registry import build, discover
    from saefw.sources.base import RunSpec

    discover()
    src = build("source", {"name": "hf", "model": str(tiny_model), "layer": 1, "site": "resid_post",
                           "context_size": 32, "eval_contexts": 6}, spec=RunSpec(seed=0, train_tokens=0))
    src.setup()
    x = torch.cat(list(src.eval_batches(4096)))
    with torch.no_grad():
        f = sl.encode(x)
        x_hat = sl.decode(f)
        ce_sae = next_token_ce(src.lm.logits(src.eval_tokens, replace=lambda a: sl(a)), src.eval_tokens).mean()
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert m["l0"] == pytest.approx((f > 0).float().sum(-1).mean().item(), rel=1e-6)
    assert m["explained_variance"] == pytest.approx(ev.item(), rel=1e-4, abs=1e-5)
    assert m["ce_sae"] == pytest.approx(ce_sae.item(), rel=1e-5)
    assert m["ce_loss_recovered"] == pytest.approx((m["ce_zero"] - m["ce_sae"]) / (m["ce_zero"] - m["ce_clean"]))


@pytest.fixture
def composed():
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        yield lambda *ov: compose(config_name="evaluate", overrides=list(ov))
    GlobalHydra.instance().clear()


def test_evaluating_a_saefw_run_reproduces_its_final_metrics(trained_runs, composed, tmp_path):
    run_dir = trained_runs["jumprelu"]
    trained = json.loads((run_dir / "metrics.json").read_text())
    # the run used source.context_size=32 source.eval_contexts=4 (helpers.TINY_RUN): the same held-out split
    record = evaluate(composed(f"sae={run_dir}", "source.context_size=32", "source.eval_contexts=4"), tmp_path / "e")
    assert (record["arch"], record["penalty"], record["layer"], record["site"]) == ("jumprelu", "l0", 1, "resid_post")
    for key in ("l0", "explained_variance", "ce_loss_recovered", "dead_fraction_heldout", "shrinkage",
                "ce_loss_recovered_se"):
        assert record[key] == pytest.approx(trained[key], rel=1e-4, abs=1e-5), key
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["l0"] == record["l0"]
    assert json.loads((run_dir / "metrics.json").read_text()) == trained  # the run's own file is untouched


def test_command_line_overrides_the_saes_own_layer(trained_runs, composed, tmp_path):
    record = evaluate(composed(f"sae={trained_runs['l1']}", "layer=2", "site=mlp_out", *SOURCE,
                               "evaluators=[l0]"), tmp_path)
    assert (record["layer"], record["site"]) == (2, "mlp_out") and set(record) >= {"l0"}


def test_never_writes_into_a_run_directory_or_over_its_metrics(trained_runs, composed, tmp_path):
    run_dir = trained_runs["topk"]
    before = (run_dir / "metrics.json").read_text()
    with pytest.raises(SaefwError, match="is a saved SAE directory"):
        evaluate(composed(f"sae={trained_runs['l1']}", *SOURCE), run_dir)
    (tmp_path / "metrics.json").write_text(before)
    with pytest.raises(SaefwError, match="was not written by saefw.evaluate: not overwriting it"):
        evaluate(composed(f"sae={trained_runs['l1']}", *SOURCE), tmp_path)
    assert (run_dir / "metrics.json").read_text() == before == (tmp_path / "metrics.json").read_text()


def test_missing_hook_information_names_what_to_pass(tiny_model, composed, tmp_path):
    saelens_sae_for(tiny_model, model_name=None, hook_name="blocks.2.attn.hook_z").save_model(tmp_path / "sae")
    with pytest.raises(SaefwError, match=r"does not say which model/site the SAE reads "
                                         r"\(hook_name='blocks.2.attn.hook_z'\); pass model=... site=..."):
        evaluate(composed(f"sae={tmp_path / 'sae'}"), tmp_path / "e")
    with pytest.raises(SaefwError, match="no cfg.json in"):
        evaluate(composed(f"sae={tmp_path}"), tmp_path / "e")


def test_a_synthetic_source_sae_evaluates_on_its_source_with_ground_truth(composed, tmp_path):
    from saefw.io.saved import save_sae
    from saefw.registry import build, discover
    from saefw.sources.base import RunSpec

    discover()
    source = build("source", {"name": "synthetic", "eval_tokens": 2048}, spec=RunSpec(seed=0, train_tokens=0))
    sae = build("arch", {"name": "topk", "k": 5}, d_in=64, d_sae=256)
    with torch.no_grad():  # the true directions as decoder rows: a perfect dictionary for mmcs
        sae.W_dec.copy_(source.ground_truth)
        sae.W_enc.copy_(source.ground_truth.T)
    save_sae(sae, tmp_path / "sae", {**source.describe(), "source": "synthetic", "penalty": "none"})
    with pytest.raises(SaefwError, match=r"pass model=... layer=... site=..., or source=synthetic"):
        evaluate(composed(f"sae={tmp_path / 'sae'}"), tmp_path / "e")
    record = evaluate(composed(f"sae={tmp_path / 'sae'}", "source=synthetic", "source.eval_tokens=2048"),
                      tmp_path / "e")
    assert record["mmcs"] == pytest.approx(1.0) and record["frac_recovered"] == 1.0  # ground_truth by default
    assert "ce_loss_recovered" not in record and record["eval_tokens"] == 2048 and record["penalty"] == "none"


def test_the_runs_source_and_evaluators_are_carried_unless_the_caller_sets_them(composed):
    saved = {"source": {"name": "synthetic", "d": 16, "eval_tokens": 512}, "evaluators": {"l0": {}}}
    out = carried(composed("sae=x"), saved, lambda key: False)  # only sae=: every saved setting, source included
    assert out == {"source": saved["source"], "evaluators": {"l0": {}}}
    given = {"source", "source.eval_tokens", "evaluators"}.__contains__
    out = carried(composed("sae=x", "source=synthetic", "source.eval_tokens=128", "evaluators=[l0,shrinkage]"),
                  saved, given)
    assert out["source"] == {"name": "synthetic", "d": 16, "eval_tokens": 128}  # the one given wins, d stays
    assert sorted(out["evaluators"]) == ["l0", "shrinkage"]
    out = carried(composed("sae=x", "source=hf", "source.context_size=64"), saved,
                  {"source", "source.context_size"}.__contains__)
    assert (out["source"]["name"], out["source"]["context_size"], "d" in out["source"]) == ("hf", 64, False)
    assert out["evaluators"] == {"l0": {}}
    assert carried(composed("sae=x"), None, lambda key: False)["source"]["name"] == "hf"  # a SAELens dir
