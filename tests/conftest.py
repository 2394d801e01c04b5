"""Shared fixtures: tiny random GPT-2, GPT-NeoX and Llama models saved with ``save_pretrained`` and loaded back
through the same ``from_pretrained`` path the framework uses (unit tests never load SmolLM2)."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# activation stores of the test session live apart from the user's (the CLI subprocesses inherit this)
os.environ["SAEFW_STORE"] = tempfile.mkdtemp(prefix="saefw-test-stores-")


def _word_tokenizer(path: Path):
    """A word-level tokenizer trained on the embedded corpus in well under a second (no hub needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from saefw.corpus import Corpus

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(itertools.islice(Corpus("factbook").documents(), 400), trainers.WordLevelTrainer(
        vocab_size=1500, special_tokens=["<|endoftext|>", "<bos>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<|endoftext|>",
                                   unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def _build(kind: str, path: Path, n_layers: int = 4, hidden: int = 32) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _word_tokenizer(path)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=n_layers, n_embd=32, n_head=4, n_positions=128, **ids))
    elif kind == "neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=32, num_attention_heads=4,
                                                 intermediate_size=64, max_position_embeddings=128, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=n_layers, hidden_size=hidden, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=2 * hidden,
                                             max_position_embeddings=128, **ids))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: _build(kind, root / kind) for kind in ("gpt2", "neox", "llama")}


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    return tiny_models["llama"]


def run_cli(*args: str, cwd: Path, timeout: int = 300, extra_path: Path | None = None,
            module: str = "saefw") -> subprocess.CompletedProcess:
    """The real CLI (``python -m <module>``) in a subprocess, as a user runs it; ``extra_path`` plays an
    installed site dir."""
    path = os.pathsep.join(str(p) for p in (extra_path, REPO) if p)
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


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


def set_params(module, **tensors) -> None:
    """Overwrite named parameters/buffers of ``module`` in place (hand-built test SAEs)."""
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(module, name).copy_(torch.as_tensor(value, dtype=getattr(module, name).dtype))


def zero_penalty(s):
    """A stand-in for the "none" penalty, so arch tests do not depend on the penalty plugins."""
    return s.W_dec.sum() * 0.0
