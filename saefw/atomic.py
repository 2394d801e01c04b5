"""Atomic file writes (a temporary file beside the target, then a rename), so an interrupted write never leaves a
truncated CSV, JSON or HTML file behind."""
from __future__ import annotations

import os
from pathlib import Path


def partial_path(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
