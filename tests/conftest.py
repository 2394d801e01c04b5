"""Shared fixtures: tiny random GPT-2, GPT-NeoX and Llama models saved with ``save_pretrained`` and loaded back
through the same ``from_pretrained`` path the framework uses (unit tests never load SmolLM2), and one tiny trained
run per arch. Helpers (not fixtures) live in tests/helpers.py."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# under pytest-xdist (-n N) the workers share the cores, and so do the CLI processes they start (they inherit
# this): OpenMP threads of several processes spinning on the same cores make each of them many times slower
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest  # noqa: E402
from helpers import build_tiny_model, run_cli

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# activation stores of the test session live apart from the user's (the CLI subprocesses inherit this)
os.environ["SAEFW_STORE"] = tempfile.mkdtemp(prefix="saefw-test-stores-")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: build_tiny_model(kind, root / kind) for kind in ("gpt2", "neox", "llama")}


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def trained_runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """One tiny run directory per built-in arch, trained through the real CLI (one multirun) on the tiny Llama."""
    from helpers import TINY_RUN

    archs = ("l1", "gated", "topk", "jumprelu", "batchtopk")
    root = tmp_path_factory.mktemp("trained")
    r = run_cli("-m", f"arch={','.join(archs)}", f"model={tiny_model}", *TINY_RUN, f"hydra.sweep.dir={root}",
                "hydra.sweep.subdir=${hydra:runtime.choices.arch}", cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return {arch: root / arch for arch in archs}


@pytest.fixture(scope="session")
def openai_server(tiny_model, tmp_path_factory):
    """(base URL, model dir) of one real OpenAI-compatible server (``transformers serve`` on 127.0.0.1) shared
    by every test that talks to one: starting it costs tens of seconds."""
    from openai_server import chat_model, transformers_serve

    root = tmp_path_factory.mktemp("openai-server")
    model = chat_model(tiny_model, root / "model")
    with transformers_serve(model, root / "serve.log") as url:
        yield url, model
