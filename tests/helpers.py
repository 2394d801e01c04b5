"""Test helpers shared by several test modules (not fixtures: import them directly; fixtures stay in conftest)."""
from __future__ import annotations

import itertools
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


def run_cli(*args: str, cwd: Path, timeout: int = 600, extra_path: Path | None = None,
            module: str = "saefw") -> subprocess.CompletedProcess:
    """The real CLI (``python -m <module>``) in a subprocess, as a user runs it; ``extra_path`` plays an
    installed site dir."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=_cli_env(extra_path),
                          capture_output=True, text=True, timeout=timeout)


def _cli_env(extra_path: Path | None = None, **extra: str) -> dict:
    """The environment of a CLI child: this process's (see :func:`_parent_env`), saefw importable, W&B offline."""
    path = os.pathsep.join(str(p) for p in (extra_path, REPO) if p)
    return {**_parent_env(), "PYTHONPATH": path, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}


def run_clis(argvs: list[list[str]], cwd: Path, timeout: int = 600, module: str = "saefw"
             ) -> list[subprocess.CompletedProcess]:
    """:func:`run_cli` for several independent command lines at once (each still its own process, as a user runs
    it): their interpreter start-ups and imports, most of a failing command's time, overlap. The cores are shared
    out among them: OpenMP threads of several processes spinning on the same cores make each many times slower."""
    env = _cli_env(OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // len(argvs))))
    procs = [subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in argvs]
    done = []
    for args, p in zip(argvs, procs):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        done.append(subprocess.CompletedProcess([sys.executable, "-m", module, *args], p.returncode, out, err))
    return done


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
    from saefw.lm.model import LanguageModel

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


def _word_tokenizer(path: Path):
    """A word-level tokenizer trained on the embedded corpus in well under a second (no hub needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from saefw.lm.corpus import Corpus

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(itertools.islice(Corpus("factbook").documents(), 400), trainers.WordLevelTrainer(
        vocab_size=1500, special_tokens=["<|endoftext|>", "<bos>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<|endoftext|>",
                                   unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def build_tiny_model(kind: str, path: Path, n_layers: int = 4, hidden: int = 32) -> Path:
    """A random GPT-2 / GPT-NeoX / Llama (``kind``) with the word tokenizer, saved with ``save_pretrained``."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

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


def set_params(module, **tensors) -> None:
    """Overwrite named parameters/buffers of ``module`` in place (hand-built test SAEs)."""
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(module, name).copy_(torch.as_tensor(value, dtype=getattr(module, name).dtype))


def zero_penalty(s):
    """A stand-in for the "none" penalty, so arch tests do not depend on the penalty plugins."""
    return s.W_dec.sum() * 0.0


def _parent_env() -> dict:
    """This process's environment without WANDB_SERVICE: a test that used W&B in process leaves its service's
    address there, and a CLI child would log through that shared service, which still holds the run id of a
    killed child ("run ID is in use" on resume). A user's shell has no such variable."""
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def cli_env(**extra: str) -> dict:
    """The environment ``spawn_cli`` gives the CLI (offline W&B, offline hub, this checkout first)."""
    return {**_parent_env(), "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "HF_HUB_OFFLINE": "1", **extra}


def spawn_cli(*args: str, cwd: Path, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """``python -m saefw args...`` started in the background (output to ``log``), to be killed or waited on; in a
    session of its own, so ``os.killpg`` kills it with its children (W&B's service) as a scheduler kills a job."""
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "saefw", *args], cwd=cwd, env=env or cli_env(),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


# An l1 SAE plugin that writes down what it trains on: one JSON line per training step (per rank) with a digest
# of the whole batch and of each row, so tests can check which tokens a run trained on, in which order, on which
# rank. It is a real local plugin (plugins/ledger.py in the working directory), found by discovery.
LEDGER_PLUGIN = '''
import hashlib
import json
import os
from dataclasses import dataclass

import torch

from saefw.arch.l1 import L1Config, L1SAE
from saefw.registry import register


@dataclass
class LedgerConfig(L1Config):
    ledger_dir: str = "ledger"


@register("arch", "ledger_l1", LedgerConfig)
class LedgerL1SAE(L1SAE):
    """An l1 SAE that appends a digest of every training batch it sees to <ledger_dir>/rank<r>.jsonl."""

    def train_forward(self, x, dead_mask=None):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        data = x.detach().cpu().contiguous()
        line = {"pid": os.getpid(), "batch": hashlib.sha1(data.numpy().tobytes()).hexdigest(),
                "rows": [hashlib.sha1(r.numpy().tobytes()).hexdigest()[:16] for r in data]}
        with open(os.path.join(self.cfg.ledger_dir, f"rank{rank}.jsonl"), "a") as fh:
            fh.write(json.dumps(line) + "\\n")
        return super().train_forward(x, dead_mask)
'''


def install_ledger(cwd: Path, name: str = "ledger") -> tuple[list[str], Path]:
    """Put the ledger plugin into ``cwd/plugins``; returns the overrides that train with it and its folder."""
    (cwd / "plugins").mkdir(exist_ok=True)
    (cwd / "plugins" / "ledger.py").write_text(LEDGER_PLUGIN)
    folder = cwd / name
    folder.mkdir(exist_ok=True)
    return ["arch=ledger_l1", f"arch.ledger_dir={folder}"], folder


def read_ledger(folder: Path, rank: int = 0) -> list[dict]:
    path = Path(folder) / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def train_topk_in_process(sae, sample, steps: int, lr: float = 1e-2, batch: int = 128) -> None:
    """``steps`` Adam steps of a top-k arch (penalty none) on raw rows ``sample(batch)``, with the unit-norm
    decoder kept as the Lightning module keeps it (a synthetic-recovery test's training, without a Trainer)."""
    from saefw.arch.base import compose_loss
    from saefw.registry import build

    none = build("penalty", {"name": "none"})
    opt = torch.optim.Adam(sae.param_groups(lr))
    for _ in range(steps):
        out = compose_loss(sae.train_forward(sae.scale_rows(sample(batch))), none, 0.0)
        opt.zero_grad()
        out.loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()


def random_transcoder(arch: str = "transcoder", activation: str = "topk", d_in: int = 6, d_sae: int = 10,
                      d_out: int = 4, seed: int = 0, skip_scale: float = 1.0):
    """A (skip-)transcoder with random weights (W_skip times ``skip_scale``), k = 3 for topk, jumprelu thresholds
    in [0.1, 2.1], input_scale 1.7 and target_scale 0.6 (both folded on save), in eval mode."""
    from saefw.registry import build, discover

    discover()
    torch.manual_seed(seed)
    sae = build("arch", {"name": arch, "activation": activation, **({"k": 3} if activation == "topk" else {})},
                d_in=d_in, d_sae=d_sae, d_out=d_out)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * {"b_enc": 0.3, "W_skip": skip_scale}.get(name, 1.0))
        if activation == "jumprelu":
            sae.log_threshold.copy_(torch.rand(d_sae).mul(2).add(0.1).log())
    sae.input_scale.fill_(1.7)
    sae.target_scale.fill_(0.6)
    return sae.eval()

