"""Command-line entry points: every command is one Hydra app with its config under ``conf/``.

``python -m saefw`` trains; other commands (``python -m saefw.evaluate`` ...) call :func:`command` with their
own config name, so overrides, ``--help``, plugin discovery and error reporting work the same everywhere.

``+arch=gated`` (the form in the user's card) and ``arch=gated`` both work: the plugin families are already in
the defaults list, so a leading ``+`` on them is dropped before Hydra sees it.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PLUS_FAMILY = re.compile(r"^\+(source|arch|penalty)=")


def normalise_overrides(args: list[str]) -> list[str]:
    return [_PLUS_FAMILY.sub(r"\1=", a) for a in args]


def on_command_line(key: str) -> bool:
    """Whether the running Hydra app's command line (or its multirun sweep) set ``key`` itself, e.g.
    ``evaluators=[l0,mmcs]``; False outside a Hydra app (library use)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    pattern = re.compile(rf"^[+~]*{re.escape(key)}(=|$)")
    return any(pattern.match(o) for o in HydraConfig.get().overrides.task)


def conf_dir() -> Path:
    """conf/ beside the package in a checkout, or saefw/conf inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"saefw's conf/ directory is missing (looked in {here} and {here.parent})")


def command(config_name: str, task: Callable[[Any, Path], Any], argv: list[str] | None = None) -> Any:
    """Run ``task(cfg, output_dir)`` as the Hydra app ``conf/<config_name>.yaml``.

    A :class:`~saefw.errors.SaefwError` (a user mistake: bad value, missing file) prints one ``error:`` line and
    exits with status 2, never a traceback."""
    import hydra

    from saefw.config import store_schema
    from saefw.errors import SaefwError
    from saefw.registry import discover

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network at run time unless the user asks for it
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    sys.argv = [sys.argv[0], *normalise_overrides(argv)]
    store_schema()
    try:
        discover()
    except SaefwError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    @hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")
    def _task(cfg):
        from hydra.core.hydra_config import HydraConfig

        try:
            return task(cfg, Path(HydraConfig.get().runtime.output_dir))
        except SaefwError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return _task()


def main(argv: list[str] | None = None) -> None:
    """``python -m saefw [overrides]``: train and evaluate one SAE (a sweep with ``-m``)."""

    def train(cfg, output_dir):
        from saefw.run import run

        return run(cfg, output_dir)

    command("config", train, argv)
