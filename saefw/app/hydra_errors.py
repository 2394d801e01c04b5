"""Hydra's composition errors as one ``error:`` line naming the bad value and what is valid.

Hydra reports a bad override (unknown option, wrong type, unknown key) as a block of lines (the search path, the
object types, a hint about ``HYDRA_FULL_ERROR``) on stderr and exits with status 1. :class:`StderrGate` holds
stderr back until the task starts; when Hydra gives up before that, :func:`one_line` condenses what it wrote, and
the CLI prints that line and exits with status 2, like every other user error.
"""
from __future__ import annotations

import dataclasses
import io
import re
import sys

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from saefw.app.conf import conf_dir
from saefw.registry import _REGISTRY

_NOISE = re.compile(r"^(Config search path:|provider=|Set the environment variable HYDRA_FULL_ERROR|full_key:|"
                    r"object_type=|reference_type=|To append to your config use|Available options in)")


class StderrGate:
    """Stands in for ``sys.stderr`` and keeps what is written until :meth:`release` (then passes it through)."""

    def __init__(self, real):
        self.real, self.buffer, self.holding = real, io.StringIO(), True

    def write(self, text: str) -> int:
        return (self.buffer if self.holding else self.real).write(text)

    def flush(self) -> None:
        if not self.holding:
            self.real.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding ... of the real stream
        return getattr(self.real, name)

    def captured(self) -> str:
        return self.buffer.getvalue()

    def release(self, forward: bool = True) -> None:
        """Stop holding: restore ``sys.stderr`` and (``forward``) write out what was held."""
        if not self.holding:
            return
        self.holding = False
        if sys.stderr is self:
            sys.stderr = self.real
        if forward and self.buffer.getvalue():
            self.real.write(self.buffer.getvalue())
            self.real.flush()


_gate: StderrGate | None = None


def hold_stderr() -> StderrGate:
    """Hold stderr back (until :func:`release_stderr`): the CLI does this around Hydra's composition."""
    global _gate
    _gate = StderrGate(sys.stderr)
    sys.stderr = _gate
    return _gate


def release_stderr() -> None:
    """Composition succeeded (a task or a multirun starts): stop holding stderr. Module-level, so a task
    function that calls it still pickles for out-of-process launchers."""
    if _gate is not None:
        _gate.release()


def is_composition_error(text: str) -> bool:
    """Whether Hydra's report is a config problem (rather than a crash with a traceback)."""
    return "Traceback (most recent call last)" not in text


def _known_keys(type_name: str) -> list[str] | None:
    """Field names of the config dataclass ``type_name`` (the run schema's or a registered plugin's)."""
    classes = [e.config_cls for family in _REGISTRY.values() for e in family.values()]
    classes += _stored_schemas(ConfigStore.instance().repo)
    for cls in classes:
        if cls.__name__ == type_name and dataclasses.is_dataclass(cls):
            return [f.name for f in dataclasses.fields(cls)]
    return None


def _stored_schemas(repo: dict) -> list[type]:
    """The dataclasses of the structured configs in Hydra's ConfigStore (a command's schema, e.g. the run's
    ``RunConfig``) and of the dataclass fields nested in them (``TrainConfig`` ...)."""
    found: list[type] = []

    def add(cls):
        if dataclasses.is_dataclass(cls) and cls not in found:
            found.append(cls)
            for f in dataclasses.fields(cls):
                add(f.default_factory if f.default_factory is not dataclasses.MISSING else None)

    for value in repo.values():
        if isinstance(value, dict):
            found += [c for c in _stored_schemas(value) if c not in found]
        elif getattr(value, "node", None) is not None:
            add(OmegaConf.get_type(value.node))
    return found


def one_line(text: str) -> str:
    """Hydra's multi-line error ``text`` as one line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    options = [ln for ln in lines if re.fullmatch(r"[\w.\-]+", ln)]  # the tab-indented list after "Available ..."
    m = re.search(r"Could not (?:find|load) '([^']+)/([^'/]+)'", text)
    if m:
        group, name = m.groups()
        if not options:
            options = _group_options(group)
        valid = f"; available options in '{group}': {', '.join(options)}" if options else ""
        return f"{group}={name}: Could not find '{group}/{name}'{valid}"
    m = re.search(r"Key '([^']+)' not in '(\w+)'", text)
    over = re.search(r"Could not override '([^']+)'", text)
    if m and over:
        keys = _known_keys(m.group(2))
        valid = f"; valid keys there: {', '.join(keys)}" if keys else ""
        return f"{over.group(1)}: unknown key '{m.group(1)}' ({m.group(2)}){valid}"
    m = re.search(r"Key '([^']+)' is not in struct", text)
    if m and over:
        return (f"{over.group(1)}: unknown key '{m.group(1)}' (to add a key the config does not have, write "
                f"+{over.group(1)}=...)")
    m = re.search(r"Error merging override (\S+)", text)
    if m:
        detail = next((ln for ln in lines if ln.startswith(("Value ", "Invalid value", "Unsupported"))), None)
        detail = detail or next((ln for ln in lines[1:] if not _NOISE.match(ln)), "")
        return f"{m.group(1)}: {detail}".rstrip(": ")
    kept = [ln for ln in lines if not _NOISE.match(ln) and ln not in options]
    return "; ".join(kept) or "invalid configuration"


def _group_options(group: str) -> list[str]:
    """The configs Hydra knows in ``group`` (registered plugins and YAML presets)."""

    names = set()
    try:
        names.update(n.removesuffix(".yaml") for n in ConfigStore.instance().list(group))
    except OSError:
        pass
    folder = conf_dir() / group
    if folder.is_dir():
        names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)
