"""Which W&B mode a run can really use: ``online`` only with an API key configured and the server reachable.

Nothing may hang on a login prompt or an unreachable server: with ``wandb.mode=online`` and no key (neither
``WANDB_API_KEY`` nor a netrc entry for the W&B host), or with the host unreachable within a few seconds, the run
logs offline instead, with one warning (``wandb sync <run dir>/wandb/offline-run-*`` uploads it later). W&B itself
is never asked to log in when no key is configured.
"""
from __future__ import annotations

import logging
import netrc
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from saefw.errors import SaefwError

log = logging.getLogger("saefw")
MODES = ("offline", "online", "disabled")
PROBE_SECONDS = 5.0
_warned: set[str] = set()


@dataclass
class WandbSettings:
    """Where a command's W&B run goes (training runs add ``name`` and ``tags``: :class:`saefw.training.config.
    WandbConfig`); ``offline`` writes ``<dir>/wandb/offline-run-*`` and never asks for a login (``wandb sync``
    uploads it later)."""

    mode: str = field(default="offline", metadata={"help": (
        "offline | online | disabled; offline runs upload later with `wandb sync`")})
    project: str = "saefw"
    entity: str | None = None
    group: str | None = field(default=None, metadata={"help": (
        "null: the sweep directory's name (the group a sweep's jobs log to)")})

    def check_mode(self) -> None:
        if self.mode not in MODES:
            raise SaefwError(f"wandb.mode={self.mode!r} is invalid; valid: {', '.join(MODES)}")


def host() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def api_key_configured() -> bool:
    """``WANDB_API_KEY`` (or an identity token file), or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY", "").strip() or os.environ.get("WANDB_IDENTITY_TOKEN_FILE", "").strip():
        return True
    name, _ = host()
    paths = [Path(os.environ["NETRC"])] if os.environ.get("NETRC") else [Path.home() / ".netrc",
                                                                         Path.home() / "_netrc"]
    for path in paths:
        try:
            if netrc.netrc(str(path)).authenticators(name):
                return True
        except (OSError, netrc.NetrcParseError):
            continue
    return False


def reachable(timeout: float = PROBE_SECONDS) -> bool:
    """A TCP connection to the W&B host within ``timeout`` seconds (name resolution included: it runs in a
    daemon thread, so a resolver that never answers cannot hold the run)."""
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection(host(), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def effective_mode(mode: str) -> str:
    """``mode``, or ``offline`` (with one warning) when ``online`` cannot work here."""
    WandbSettings(mode=mode).check_mode()
    if mode != "online":
        return mode
    if not api_key_configured():
        _warn("no-key", "wandb.mode=online but no W&B API key is configured (WANDB_API_KEY or `wandb login`): "
                        "logging offline instead; upload later with `wandb sync <run dir>/wandb/offline-run-*`")
        return "offline"
    if not reachable():
        _warn("no-net", f"wandb.mode=online but {host()[0]} is not reachable: logging offline instead; upload "
                        f"later with `wandb sync <run dir>/wandb/offline-run-*`")
        return "offline"
    return "online"


def fall_back(exc: BaseException) -> None:
    """The warning for an online W&B run that failed to start (the caller then logs offline)."""
    _warn("init", f"W&B online run could not start ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}): "
                  f"logging offline instead; upload later with `wandb sync`")


def _warn(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)
