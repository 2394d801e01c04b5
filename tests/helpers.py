"""Test helpers shared by several test files (not fixtures: import them directly)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
