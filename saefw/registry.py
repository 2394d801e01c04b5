"""Plugin registry: five families, one decorator, typed configs that Hydra validates at composition.

    @register("arch", "gated", GatedConfig)
    class GatedSAE(SAE): ...

registers the class and stores ``GatedConfig`` (plus a ``name`` key) in Hydra's ConfigStore under the family's
config group, so ``arch=gated arch.l1_coefficient=3`` is type-checked by Hydra and ``--help`` lists it.
Evaluators are a multi-select group: each one's config sits under ``evaluators.<name>``.

Discovery (``discover()``) imports the built-in plugins, then every ``saefw.plugins`` entry point, then each
``plugins/*.py`` of the working directory as the real module ``plugins.<name>``.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from saefw.errors import SaefwError, unset_value

log = logging.getLogger(__name__)

FAMILIES = {"source": "source", "arch": "arch", "penalty": "penalty", "evaluator": "evaluators",
            "explainer": "explainer"}
"""family name -> Hydra config group."""

BUILTIN_MODULES = (
    "saefw.sources", "saefw.arch", "saefw.penalties", "saefw.evals", "saefw.explainers",
)


@dataclass
class Entry:
    name: str
    cls: type
    config_cls: type
    module: str


_REGISTRY: dict[str, dict[str, Entry]] = {family: {} for family in FAMILIES}


def register(family: str, name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: register ``cls`` as plugin ``name`` of ``family`` with ``config_cls`` as its schema."""
    if family not in FAMILIES:
        raise SaefwError(f"unknown plugin family {family!r}; families: {', '.join(FAMILIES)}")
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config of {family} plugin {name!r} must be a @dataclass, got {config_cls!r}")

    def deco(cls: type) -> type:
        old = _REGISTRY[family].get(name)
        if old is not None and (old.cls.__module__, old.cls.__qualname__) != (cls.__module__, cls.__qualname__):
            raise SaefwError(f"{family} plugin {name!r} is registered twice: {old.module} and {cls.__module__}")
        _REGISTRY[family][name] = Entry(name, cls, config_cls, cls.__module__)
        _store(family, name, config_cls, cls)
        cls.plugin_name = name
        return cls

    return deco


def _store(family: str, name: str, config_cls: type, cls: type) -> None:
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.structured(config_cls)
    group = FAMILIES[family]
    if family == "evaluator":
        ConfigStore.instance().store(group=group, name=name, node=node, package=f"{group}.{name}")
        return
    with open_dict(node):
        node["name"] = name  # which plugin the composed config builds; dataclass fields stay type-checked
        if family == "arch":
            # each arch picks its natural penalty (topk -> none, jumprelu -> l0); `penalty=...` still overrides
            node["defaults"] = [{"/penalty@_global_.penalty": cls.default_penalty}, "_self_"]
    ConfigStore.instance().store(group=group, name=name, node=node)


def names(family: str) -> list[str]:
    return sorted(_REGISTRY[family])


def entry(family: str, name: str) -> Entry:
    try:
        return _REGISTRY[family][name]
    except KeyError:
        raise SaefwError(f"unknown {FAMILIES[family]}={name!r}; registered: {', '.join(names(family)) or '(none)'}") from None


def make_config(family: str, name: str, cfg: DictConfig | dict | None = None) -> Any:
    """The typed dataclass instance for plugin ``name``, built from ``cfg`` (the ``name`` key is dropped)."""
    e = entry(family, name)
    fields = {k: v for k, v in (OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig)
                                else dict(cfg or {})).items() if k != "name"}
    known = {f.name for f in dataclasses.fields(e.config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise SaefwError(f"{FAMILIES[family]}={name} has no option {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    config = e.config_cls(**fields)
    # a mandatory field (MISSING, ``???``) left unset would reach the plugin as the string '???'
    unset = _unset_keys(dataclasses.asdict(config), option_prefix(family, name))
    if unset:
        raise unset_value(unset[0], f"{FAMILIES[family]}={name}")
    return config


def option_prefix(family: str, name: str) -> str:
    """Where plugin ``name``'s options sit in the run config: ``arch`` (one plugin per group), ``evaluators.l0``
    (one entry of the evaluator list)."""
    return f"{FAMILIES[family]}.{name}" if family == "evaluator" else FAMILIES[family]


def _unset_keys(value: Any, key: str) -> list[str]:
    """The dotted keys under ``key`` whose value is OmegaConf's MISSING (``???``)."""
    if isinstance(value, dict):
        return [u for k, v in value.items() for u in _unset_keys(v, f"{key}.{k}")]
    if isinstance(value, list):
        return [u for i, v in enumerate(value) for u in _unset_keys(v, f"{key}[{i}]")]
    return [key] if value == MISSING else []


def build(family: str, cfg: DictConfig | dict, name: str | None = None, **kwargs: Any) -> Any:
    """Instantiate a plugin from its config node: ``cls(config, **kwargs)``."""
    name = name or cfg["name"]
    return entry(family, name).cls(make_config(family, name, cfg), **kwargs)


_discovered = False


def discover(plugin_dirs: list[Path] | None = None) -> None:
    """Import built-ins, then ``saefw.plugins`` entry points, then ``plugins/*.py`` (idempotent)."""
    global _discovered
    if _discovered and plugin_dirs is None:
        return
    for mod in BUILTIN_MODULES:
        import_submodules(mod)
    for ep in entry_points(group="saefw.plugins"):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the framework down
            log.warning("saefw plugin entry point %r failed to load: %s", ep.name, exc)
    for root in plugin_dirs if plugin_dirs is not None else [Path.cwd()]:
        _import_local_plugins(Path(root))
    _discovered = True


def _import_local_plugins(root: Path) -> None:
    folder = root / "plugins"
    if not folder.is_dir():
        return
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # so `plugins.<name>` is a real, picklable module in launcher workers
    for path in sorted(folder.glob("*.py")):
        if path.stem != "__init__":
            importlib.import_module(f"plugins.{path.stem}")


def import_submodules(package: str) -> None:
    """Import every module of a built-in plugin package, so adding a plugin file needs no other edit; a package's
    command (``python -m saefw.evals``: ``__main__`` and ``command``) is not a plugin."""
    import pkgutil

    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "__main__", "command"):
            importlib.import_module(f"{package}.{info.name}")
