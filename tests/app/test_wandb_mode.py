"""``wandb.mode=online`` without a key or without a network: the run logs offline with one warning, never hangs."""
import logging
import socket
import subprocess
import sys

import pytest
from helpers import TINY_RUN, cli_env

from saefw.app import wandb_settings as wandb_mode


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    wandb_mode._warned.clear()


def test_online_without_a_key_is_offline_with_one_warning(no_key, caplog):
    with caplog.at_level(logging.WARNING, logger="saefw"):
        assert wandb_mode.effective_mode("online") == "offline"
        assert wandb_mode.effective_mode("online") == "offline"
    assert [r.getMessage() for r in caplog.records].count(
        "wandb.mode=online but no W&B API key is configured (WANDB_API_KEY or `wandb login`): logging offline "
        "instead; upload later with `wandb sync <run dir>/wandb/offline-run-*`") == 1
    assert wandb_mode.effective_mode("offline") == "offline" and wandb_mode.effective_mode("disabled") == "disabled"


def test_a_netrc_entry_counts_as_a_key_and_an_unreachable_host_means_offline(no_key, tmp_path, monkeypatch):
    (tmp_path / ".netrc").write_text("machine 127.0.0.1\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    assert wandb_mode.api_key_configured()
    assert not wandb_mode.reachable(timeout=2)
    assert wandb_mode.effective_mode("online") == "offline"


@pytest.mark.parametrize("key", [None, "0" * 40])
def test_cli_online_without_key_or_network_runs_offline_and_does_not_hang(tiny_model, tmp_path, key):
    env = {k: v for k, v in cli_env().items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "NETRC")}
    env.update(HOME=str(tmp_path), WANDB_BASE_URL=f"http://127.0.0.1:{_closed_port()}")
    if key:
        env["WANDB_API_KEY"] = key  # a key, but the server cannot be reached
    run = tmp_path / "run"
    args = [a for a in TINY_RUN if not a.startswith("wandb.mode")]
    r = subprocess.run([sys.executable, "-m", "saefw", f"model={tiny_model}", *args, "wandb.mode=online",
                        f"hydra.run.dir={run}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    reason = "but no W&B API key is configured" if key is None else "but 127.0.0.1 is not reachable"
    assert sum(f"wandb.mode=online {reason}" in ln for ln in out.splitlines()) == 1
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
