"""The plugin options ``python -m saefw --help`` lists: each registered plugin's config fields with their type,
default and help text.

A config field carries its help in the dataclass, where Hydra's structured configs accept it and a reader of the
code sees it::

    @dataclass
    class TopKConfig:
        k: int | None = field(default=None, metadata={"help": "latents kept per token; null: the run's target L0"})

``conf/config.yaml``'s help template inserts :func:`options_text` through the ``saefw_plugin_options`` resolver
(registered by :func:`saefw.training.config.register_schema`), so a plugin from ``plugins/`` or an entry point is listed like a
built-in one. :func:`missing_help` names the fields without help (a test keeps it empty).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import textwrap
from pathlib import Path

from saefw.registry import FAMILIES, entry, names, option_prefix

HELP = "help"
"""The ``field(metadata=...)`` key holding a config field's help text."""

WIDTH = 120


def field_help(f: dataclasses.Field) -> str:
    """The help text of dataclass field ``f`` ("" when it has none)."""
    return str(f.metadata.get(HELP, "")).strip()


def _type_name(t) -> str:
    # annotations are strings under `from __future__ import annotations`; a real type prints as its name
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)  # null / true / [0.25, 1.0]: the spelling of a command-line override
    except TypeError:
        return repr(value)


def plugin_options(family: str, name: str) -> list[tuple[str, str, str, str]]:
    """(override key, type, default, help) of every config field of plugin ``name`` of ``family``."""
    prefix = option_prefix(family, name) + "."
    return [(prefix + f.name, _type_name(f.type), _default(f), field_help(f))
            for f in dataclasses.fields(entry(family, name).config_cls)]


def options_text(width: int = WIDTH) -> str:
    """Every registered plugin and its options, one block per plugin, help wrapped to ``width``."""
    lines = ["Pick a plugin with group=name, set its options with key=value.", ""]
    for family, group in FAMILIES.items():
        for name in names(family):
            options = plugin_options(family, name)
            pick = f"{group}=[...,{name}]" if family == "evaluator" else f"{group}={name}"
            lines.append(pick if options else f"{pick}  (no options)")
            for key, type_name, default, text in options:
                lines.append(f"  {key}: {type_name} = {default}")
                lines += textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        lines.append("")
    # Hydra fills its help template with string.Template: a literal $ (e.g. $SAEFW_CACHE) is written $$
    return "\n".join(lines).rstrip().replace("$", "$$")


def missing_help(within: Path | None = None) -> list[str]:
    """``family=name: option`` for every registered plugin config field that has no help text; ``within``: only
    plugins whose config class is defined in a file under that folder."""
    return [f"{family}={name}: {f.name}" for family in FAMILIES for name in names(family)
            if within is None or Path(inspect.getfile(entry(family, name).config_cls)).resolve().is_relative_to(within)
            for f in dataclasses.fields(entry(family, name).config_cls) if not field_help(f)]
