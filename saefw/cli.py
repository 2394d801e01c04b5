"""``python -m saefw [overrides]``: the Hydra entry point.

``+arch=gated`` (the form in the user's card) and ``arch=gated`` both work: the plugin families are already in
the defaults list, so a leading ``+`` on them is dropped before Hydra sees it.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_PLUS_FAMILY = re.compile(r"^\+(source|arch|penalty)=")


def normalise_overrides(args: list[str]) -> list[str]:
    return [_PLUS_FAMILY.sub(r"\1=", a) for a in args]


def conf_dir() -> Path:
    """conf/ beside the package in a checkout, or saefw/conf inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"saefw's conf/ directory is missing (looked in {here} and {here.parent})")


def main(argv: list[str] | None = None) -> None:
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

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def _task(cfg):
        from hydra.core.hydra_config import HydraConfig

        from saefw.run import run

        try:
            return run(cfg, Path(HydraConfig.get().runtime.output_dir))
        except SaefwError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    _task()
