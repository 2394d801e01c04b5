"""Composes every registered config (every arch with each of its penalties, every source, evaluator and preset),
so a broken preset or plugin schema fails CI."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from saefw.app.cli import conf_dir, normalise_overrides
from saefw.errors import SaefwError
from saefw.registry import FAMILIES, build, discover, entry, names
from saefw.sweeps.one_pass import OnePassLauncher
from saefw.training.config import register_schema
from saefw.training.run import build_sae, check_combination


@pytest.fixture(scope="module")
def composer():
    register_schema()
    discover()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        yield lambda *ov: compose(config_name="config", overrides=list(ov))
    GlobalHydra.instance().clear()


def test_default_config(composer):
    cfg = composer()
    assert (cfg.model, cfg.layer, cfg.site, cfg.arch.name, cfg.penalty.name) == (
        "smollm2-135m", 6, "resid_post", "topk", "none")
    assert set(cfg.evaluators) == {"l0", "reconstruction", "loss_recovered", "dead_features", "shrinkage",
                                   "ground_truth"}


def test_every_arch_with_each_allowed_penalty_composes_and_builds(composer):
    for arch in names("arch"):
        cls = entry("arch", arch).cls
        cfg = composer(f"arch={arch}")
        assert cfg.penalty.name == cls.default_penalty  # each arch brings its natural penalty
        for pen in cls.allowed_penalties:
            cfg = composer(f"arch={arch}", f"penalty={pen}")
            check_combination(arch, pen)
            # as the run builds it (k from target_l0), with what a source of the arch's layout passes
            shape = {"site": {}, "pair": {"d_out": 6}, "layers": {"n_layers": 2}}[cls.layout]
            sae = build_sae(cfg, 8, build("penalty", cfg.penalty), shape)
            assert sae.encode(torch.zeros(2, 8)).shape == (2, 64)


def test_every_source_and_evaluator_composes(composer):
    for src in names("source"):
        assert composer(f"source={src}").source.name == src
    for ev in names("evaluator"):
        cfg = composer(f"evaluators=[{ev}]")
        build("evaluator", cfg.evaluators[ev], name=ev)


def test_every_experiment_preset_composes(composer):
    presets = sorted(p.stem for p in (Path(conf_dir()) / "experiment").glob("*.yaml"))
    for preset in presets:
        for arch in names("arch"):
            composer(f"+experiment={preset}", f"arch={arch}")


def test_plus_form_of_plugin_groups_is_normalised(composer):
    ov = normalise_overrides(["+arch=l1", "layer=25", "+penalty=l1", "+arch.foo=1", "+experiment=x"])
    assert ov == ["arch=l1", "layer=25", "penalty=l1", "+arch.foo=1", "+experiment=x"]
    assert composer(*ov[:3]).layer == 25


def test_bad_values_fail_at_composition(composer):
    with pytest.raises(ConfigCompositionException):
        composer("arch=nope")
    with pytest.raises(ConfigCompositionException):
        composer("layer=abc")
    with pytest.raises(ConfigCompositionException):
        composer("arch.no_such_option=1")


def test_forbidden_combination_names_the_valid_penalties():
    discover()
    bad = [(a, p) for a in names("arch") for p in names("penalty") if p not in entry("arch", a).cls.allowed_penalties]
    assert bad, "at least one combination must be forbidden (e.g. topk with l1)"
    arch, pen = bad[0]
    with pytest.raises(SaefwError, match=f"arch={arch} does not take penalty={pen}; valid penalties"):
        check_combination(arch, pen)


def test_unknown_plugin_error_lists_registered():
    discover()
    for family in FAMILIES:
        with pytest.raises(SaefwError, match="registered: "):
            entry(family, "nope")


def test_optuna_presets_compose_with_their_sweeper_and_objective(composer):
    from saefw.training.objective import parse_objective

    cfg = compose("config", overrides=["+experiment=find_lambda", "objective.targets.l0=16"],
                  return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "minimize"
    assert cfg.hydra.sweeper.params["penalty.coefficient"] == "tag(log, interval(0.1, 100))"
    obj = parse_objective(OmegaConf.to_container(cfg.objective))
    assert obj.metrics == ("l0",) and obj.targets == {"l0": 16.0}
    assert obj.values({"l0": 20.5}) == 4.5
    cfg = compose("config", overrides=["+experiment=pareto_search"], return_hydra_config=True)
    assert list(cfg.hydra.sweeper.direction) == ["minimize", "maximize"]
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"
    assert parse_objective(list(cfg.objective)).metrics == ("l0", "ce_loss_recovered")
    # the compare callback runs after every multirun, logging to W&B the way the jobs do
    assert cfg.hydra.callbacks.compare._target_ == "saefw.sweeps.callback.CompareCallback"
    assert cfg.hydra.callbacks.compare.wandb_mode == "offline"


def test_compare_config_composes(composer):
    from saefw.sweeps.command import register_resolver

    register_resolver()
    cfg = compose(config_name="compare", overrides=["dirs=['a b',c]", "wandb.mode=disabled"],
                  return_hydra_config=True)
    assert list(cfg.dirs) == ["a b", "c"] and cfg.out is None and cfg.wandb.mode == "disabled"
    assert cfg.hydra.run.dir.startswith("outputs/compare/")  # two dirs: a fresh compare dir


def test_evaluate_config_composes_with_every_source_and_evaluator(composer):
    from saefw.evals.command import register_schema as register_evaluate_schema

    register_evaluate_schema()  # the evaluate command's own schema, as `python -m saefw.evaluate` stores it
    cfg = compose(config_name="evaluate", overrides=["sae=/some/dir"])
    assert (cfg.sae, cfg.model, cfg.layer, cfg.site, cfg.source.name) == ("/some/dir", None, None, None, "hf")
    assert set(cfg.evaluators) == set(composer().evaluators)  # the same defaults as training
    for src in names("source"):
        assert compose(config_name="evaluate", overrides=[f"source={src}"]).source.name == src
    for ev in names("evaluator"):
        assert list(compose(config_name="evaluate", overrides=[f"evaluators=[{ev}]"]).evaluators) == [ev]
    assert compose(config_name="evaluate", overrides=["layer=25", "model=gpt2"]).layer == 25
    with pytest.raises(ConfigCompositionException):
        compose(config_name="evaluate", overrides=["layer=abc"])


@pytest.mark.parametrize("name", ["features", "steer"])
def test_command_configs_compose_typed(composer, name):
    import importlib

    importlib.import_module({"features": "saefw.features.command", "steer": "saefw.features.steer"}[name]).register_schema()
    extra = ["feature=[3,7]", "scale=[4,-2]", "prompt=hi"] if name == "steer" else ["n_tokens=500"]
    cfg = compose(config_name=name, overrides=["run=/some/run", *extra])
    assert cfg.run == "/some/run"
    if name == "steer":
        assert list(cfg.feature) == [3, 7] and cfg.mode == "add" and cfg.max_new_tokens == 40
    else:
        assert cfg.n_tokens == 500 and cfg.split == "heldout" and cfg.dashboard.contexts == 10
    with pytest.raises(ConfigCompositionException):
        compose(config_name=name, overrides=["run=x", "no_such_option=1"])
    with pytest.raises(ConfigCompositionException):
        compose(config_name=name, overrides=["run=x", "max_new_tokens=abc" if name == "steer" else "n_tokens=abc"])


def test_tradeoff_preset_sweeps_every_builtin_arch_over_one_sparsity_knob(composer):
    cfg = compose("config", overrides=["+experiment=tradeoff"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.arch.split(",") == ["l1", "gated", "topk", "jumprelu", "batchtopk"]
    assert [int(v) for v in params.target_l0.split(",")] == [16, 32, 64, 128]
    from saefw.penalties.none import NonePenalty
    from saefw.training.run import sparsity_target

    for arch in params.arch.split(","):  # the one knob reaches every arch: k, or the controller's target
        c = composer("+experiment=tradeoff", f"arch={arch}", "target_l0=16")
        assert sparsity_target(c) == 16
        assert getattr(build_sae(c, 8, NonePenalty(None)), "k", 16) == 16
    assert sparsity_target(composer("arch=l1")) == entry("arch", "l1").cls.default_target_l0
    # a default is capped at a quarter of a small dictionary; a target the user sets is not
    assert sparsity_target(composer("arch=l1"), d_sae=128) == 32
    assert sparsity_target(composer("arch=l1", "target_l0=100"), d_sae=128) == 100


def test_every_launcher_preset_composes(composer):
    presets = sorted(p.stem for p in (Path(conf_dir()) / "hydra" / "launcher").glob("*.yaml"))
    assert "slurm" in presets
    for preset in presets:
        cfg = compose("config", overrides=[f"hydra/launcher={preset}", "trainer.devices=2"],
                      return_hydra_config=True)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        if preset == "one_pass":  # runs in this process: nothing per node, the launcher is saefw's own
            assert isinstance(instantiate(cfg.hydra.launcher), OnePassLauncher) and launcher["lag"] == 8
            continue
        assert launcher["tasks_per_node"] == 2


def test_relations_config_composes_typed():
    from saefw.relations.command import register_schema as register_relations_schema

    register_relations_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="relations", overrides=["runs=[a,b]", "features=[[1,2],[3]]"],
                      return_hydra_config=True)
        assert list(cfg.runs) == ["a", "b"] and cfg.top_m == 32 and cfg.n_tokens == 16384
        assert cfg.out.startswith("outputs/relations/") and cfg.hydra.run.dir == cfg.out
        assert compose(config_name="relations", overrides=["runs=[a,b]", "out=/x"], return_hydra_config=True
                       ).hydra.run.dir == "/x"
        for bad in ("top_m=abc", "no_such_option=1"):
            with pytest.raises(ConfigCompositionException):
                compose(config_name="relations", overrides=["runs=[a,b]", bad])
    GlobalHydra.instance().clear()


def test_explain_config_composes_with_every_explainer():
    from saefw.interp.command import register_schema as register_explain_schema

    register_explain_schema()
    discover()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="explain", overrides=["run=/r"])
        assert cfg.explainer.name == "local" and cfg.explainer.model == "smollm2-135m" and cfg.features == 10
        assert list(cfg.scorers) == ["detection", "fuzzing", "simulation"] and cfg.wandb.mode == "offline"
        for name in names("explainer"):
            assert compose(config_name="explain", overrides=["run=/r", f"explainer={name}"]).explainer.name == name
        cfg = compose(config_name="explain", overrides=["run=/r", "explainer=openai", "explainer.base_url=http://h/v1",
                                                        "explainer.concurrency=8", "features=[1,2]"])
        assert (cfg.explainer.base_url, cfg.explainer.concurrency, cfg.explainer.api_key_env) == (
            "http://h/v1", 8, "OPENAI_API_KEY")
        for bad in (["explainer=nope"], ["explainer=openai", "explainer.concurrency=abc"],
                    ["explainer=local", "explainer.base_url=x"], ["n_explain=abc"]):
            with pytest.raises(ConfigCompositionException):
                compose(config_name="explain", overrides=["run=/r", *bad])
    GlobalHydra.instance().clear()
