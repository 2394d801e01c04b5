"""Where saefw's Hydra configs are."""
from __future__ import annotations

from pathlib import Path

import saefw


def conf_dir() -> Path:
    """conf/ beside the package in a checkout, or saefw/conf inside an installed wheel."""
    package = Path(saefw.__file__).resolve().parent
    for cand in (package / "conf", package.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"saefw's conf/ directory is missing (looked in {package} and {package.parent})")
