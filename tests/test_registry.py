from dataclasses import dataclass

import pytest

from saefw.errors import SaefwError
from saefw.registry import _REGISTRY, build, make_config, register


@dataclass
class _Cfg:
    alpha: float = 1.0


def test_register_rejects_bad_family_non_dataclass_and_duplicates():
    with pytest.raises(SaefwError, match="unknown plugin family 'archs'; families: source, arch, penalty, evaluator"):
        register("archs", "x", _Cfg)
    with pytest.raises(TypeError, match="must be a @dataclass"):
        register("arch", "x", dict)

    @register("penalty", "_test_dup", _Cfg)
    class A:
        def __init__(self, cfg):
            self.cfg = cfg

    with pytest.raises(SaefwError, match="registered twice"):
        @register("penalty", "_test_dup", _Cfg)
        class B:
            pass

    assert build("penalty", {"name": "_test_dup", "alpha": 2.5}).cfg.alpha == 2.5
    with pytest.raises(SaefwError, match="has no option beta; options: alpha"):
        make_config("penalty", "_test_dup", {"beta": 1})


@pytest.fixture
def scratch_registry():
    """Plugins the test registers are dropped afterwards: tests that walk every registered plugin (building each
    with its defaults) must not meet one with a mandatory field."""
    before = {family: dict(entries) for family, entries in _REGISTRY.items()}
    yield
    for family, entries in before.items():
        _REGISTRY[family].clear()
        _REGISTRY[family].update(entries)


@dataclass
class _Mandatory:
    path: str = "???"  # OmegaConf's MISSING: no default, the user must set it
    inner: dict | None = None


def test_an_unset_mandatory_field_names_its_key_and_how_to_set_it(scratch_registry):
    @register("source", "_test_mandatory", _Mandatory)
    class S:
        def __init__(self, cfg, spec=None):
            self.cfg = cfg

    with pytest.raises(SaefwError) as err:
        build("source", {"name": "_test_mandatory"})
    assert str(err.value) == ("source.path is not set (??? in the config: source=_test_mandatory needs it); set it on "
                              "the command line: source.path=<value>")
    with pytest.raises(SaefwError, match=r"^source.inner.file is not set .*: source.inner.file=<value>$"):
        build("source", {"name": "_test_mandatory", "path": "a.npy", "inner": {"file": "???"}})
    assert build("source", {"name": "_test_mandatory", "path": "a.npy"}).cfg.path == "a.npy"

    @register("evaluator", "_test_mandatory_eval", _Mandatory)
    class E:
        def __init__(self, cfg):
            self.cfg = cfg

    with pytest.raises(SaefwError, match=r"^evaluators._test_mandatory_eval.path is not set .*evaluators="
                                         r"_test_mandatory_eval needs it\); .*: evaluators._test_mandatory_eval.path="):
        build("evaluator", {}, name="_test_mandatory_eval")
