from dataclasses import dataclass

import pytest

from saefw.errors import SaefwError
from saefw.registry import build, make_config, register


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
