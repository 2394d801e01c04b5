"""Test helpers shared by several test modules (not fixtures: import them directly; fixtures stay in conftest)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

# a tiny training budget for the real CLI on the tiny models of conftest.py
TINY = ["layer=1", "total_tokens=3000", "train.batch_size=256", "train.eval_every_steps=0",
        "source.context_size=32", "source.eval_contexts=6", "source.buffer_tokens=4096", "expansion_factor=4"]


def run_module(module: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` in a subprocess, as a user runs it (offline W&B, this checkout first)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def make_job(sweep_dir: Path, name: str, record: dict, overrides: list[str] | None = None,
             num: int | None = None) -> Path:
    """A hand-made job dir as a Hydra multirun leaves it: metrics.json and .hydra/{overrides,hydra}.yaml."""
    job = Path(sweep_dir) / name
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    (job / "metrics.json").write_text(json.dumps(record))
    if overrides is not None:
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if num is not None:
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    return job


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TINY_RUN = ["layer=1", "total_tokens=2048", "train.batch_size=256", "source.context_size=32",
            "source.eval_contexts=4", "expansion_factor=4", "wandb.mode=disabled",
            "trainer.enable_progress_bar=false"]
"""Overrides for a few-second training run on the tiny Llama of conftest (d_model 32, 4 layers)."""


def tiny_activations(model: Path, layer: int = 1, site: str = "resid_post", n_ctx: int = 4, seed: int = 0):
    """Real activations [n_ctx·31, 32] of the tiny model at (layer, site) on random token contexts."""
    from saefw.lm import LanguageModel

    lm = LanguageModel(str(model), layer, site)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, lm.model.config.vocab_size, (n_ctx, 32), generator=g)
    tokens[:, 0] = lm.bos_id
    return lm.activations(tokens)[:, 1:].reshape(-1, lm.d_model).float()


def assert_same_function(ours, theirs, x: torch.Tensor, atol: float = 1e-5) -> torch.Tensor:
    """saefw's ``ours`` and SAELens's ``theirs`` give the same latents and reconstructions on ``x`` (to
    ``atol``, relative 1e-5); returns the latents."""
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        torch.testing.assert_close(f_ours, f_theirs, atol=atol, rtol=1e-5)
        torch.testing.assert_close(ours.decode(f_ours), theirs.decode(f_theirs), atol=atol, rtol=1e-5)
    return f_ours
