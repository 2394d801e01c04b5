"""``python -m saefw.compare <sweep dirs or run dirs ...> [key=value ...]``: the trade-off table, Pareto
frontiers, PNG + HTML plots and a W&B compare run for every job under the given directories (conf/compare.yaml).

Bare path arguments become the ``dirs=[...]`` override (quoted for Hydra's grammar), so both
``python -m saefw.compare outputs/sweeps/2026-05-01/10-00-00`` and ``python -m saefw.compare dirs=[...]`` work."""
from __future__ import annotations

import os
import re
import sys
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from saefw.app.cli import command
from saefw.errors import SaefwError

# Hydra flags that take the next argument as their value (that argument is not a path to compare)
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                "-cd", "--experimental-rerun", "--info", "-i"}
_OVERRIDE = re.compile(r"^[+~]{0,2}[\w.\[\]/@-]+=")


def hydra_quote(text: str) -> str:
    """``text`` as a single-quoted value of Hydra's override grammar: quotes escaped, backslashes doubled where
    they precede a quote (or the closing one), and ``${`` kept literal."""
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def paths_to_override(argv: list[str]) -> list[str]:
    """Turn the bare directory arguments into one ``dirs=[...]`` override; flags and ``key=value`` overrides pass
    through. An argument naming an existing path is a path even if it contains ``=``."""
    passthrough, paths = [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("-"):
            passthrough.append(arg)
            if arg in _VALUE_FLAGS:
                nxt = next(it, None)
                if nxt is not None:
                    passthrough.append(nxt)
        elif os.path.exists(arg) or not _OVERRIDE.match(arg):
            paths.append(arg)
        else:
            passthrough.append(arg)
    if paths:
        if any(re.match(r"^[+~]{0,2}dirs=", a) for a in passthrough):
            raise SaefwError("give the directories either as paths or as dirs=[...], not both")
        passthrough.append("dirs=[" + ",".join(hydra_quote(p) for p in paths) + "]")
    return passthrough


def default_out_dir(dirs, out) -> str:
    """``out`` when set; else the one sweep dir given; else ``outputs/compare/<date>/<time>``."""
    if out:
        return str(out)
    dirs = list(dirs or [])
    if len(dirs) == 1 and os.path.isdir(dirs[0]) and not os.path.exists(os.path.join(dirs[0], "metrics.json")):
        return str(dirs[0])
    return datetime.now().strftime("outputs/compare/%Y-%m-%d/%H-%M-%S")


def register_resolver() -> None:
    # cached: Hydra resolves hydra.run.dir more than once and the time must not move between resolutions
    OmegaConf.register_new_resolver("saefw_compare_out", default_out_dir, use_cache=True, replace=True)


def _compare(cfg, output_dir: Path):
    from saefw.app.wandb_settings import WandbSettings
    from saefw.sweeps.report import compare

    settings = WandbSettings(**OmegaConf.to_container(cfg.wandb, resolve=True))
    return compare(list(cfg.dirs), output_dir, settings)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = paths_to_override(argv)
    except SaefwError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    register_resolver()
    command("compare", _compare, argv)
