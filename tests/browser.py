"""Headless Chromium (Debian's ``chromium`` package) for tests of the HTML pages saefw writes.

Pages are opened from disk (``file://``), as a user double-clicking them would; the flags keep Chromium off the
network entirely (the pages must not need it). Tests that use this skip only where Chromium is not installed;
``.ci/run`` installs it, so CI always runs them."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-extensions", "--virtual-time-budget=5000"]


def _chromium(page: Path, *extra: str, fragment: str = "") -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *extra,
                            Path(page).resolve().as_uri() + fragment], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def rendered_dom(page: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran (``fragment``, e.g. ``#feature-3``, is appended to the URL)."""
    return _chromium(page, "--dump-dom", fragment=fragment).stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 900, fragment: str = "") -> Path:
    """A PNG of the rendered page (``fragment`` as in :func:`rendered_dom`)."""
    _chromium(page, f"--screenshot={Path(png).resolve()}", f"--window-size={width},{height}", fragment=fragment)
    assert Path(png).is_file(), f"chromium wrote no screenshot of {page}"
    return Path(png)
