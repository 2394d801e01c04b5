"""Composes every registered config (every arch with each of its penalties, every source, evaluator and preset),
so a broken preset or plugin schema fails CI."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

from saefw.cli import conf_dir, normalise_overrides
from saefw.config import store_schema
from saefw.errors import SaefwError
from saefw.registry import FAMILIES, build, discover, entry, names
from saefw.run import check_combination


@pytest.fixture(scope="module")
def composer():
    store_schema()
    discover()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        yield lambda *ov: compose(config_name="config", overrides=list(ov))
    GlobalHydra.instance().clear()


def test_default_config(composer):
    cfg = composer()
    assert (cfg.model, cfg.layer, cfg.site, cfg.arch.name, cfg.penalty.name) == (
        "smollm2-135m", 6, "resid_post", "l1", "l1_decoder_norm")
    assert set(cfg.evaluators) == {"l0", "reconstruction", "loss_recovered", "dead_features", "shrinkage"}


def test_every_arch_with_each_allowed_penalty_composes_and_builds(composer):
    for arch in names("arch"):
        cls = entry("arch", arch).cls
        cfg = composer(f"arch={arch}")
        assert cfg.penalty.name == cls.default_penalty  # each arch brings its natural penalty
        for pen in cls.allowed_penalties:
            cfg = composer(f"arch={arch}", f"penalty={pen}")
            check_combination(arch, pen)
            sae = build("arch", cfg.arch, d_in=8, d_sae=64)
            assert sae.encode(torch.zeros(2, 8)).shape == (2, 64)
            build("penalty", cfg.penalty)


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


@pytest.mark.parametrize("name", ["features", "steer"])
def test_command_configs_compose_typed(name):
    import importlib

    importlib.import_module(f"saefw.{name}").store_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
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
    GlobalHydra.instance().clear()
