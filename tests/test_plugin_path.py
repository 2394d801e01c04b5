"""A plugin author's path, from the README alone, through the real CLI: a working directory with three plugins
written only against the documented base classes (a source reading the user's ``.npy`` of activations, an
evaluator, a tied-weights arch), trained once, swept with ``-m``, and evaluated with ``python -m saefw.evaluate``
given nothing but the run directory: the source settings (``source.path``) come from the run, the plugin
evaluator's number is the one training logged and the one computed here by hand from the saved weights."""
import json

import numpy as np
import pytest
import torch
from helpers import read_csv, run_clis
from safetensors.torch import load_file

NPY_SOURCE = '''
"""Activations the user saved as one .npy array [n_tokens, d_in]; the last eval_rows rows are held out."""
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING

from saefw.registry import register
from saefw.sources.base import ActivationSource


@dataclass
class NpyConfig:
    path: str = MISSING  # the .npy file of activations [n_tokens, d_in] (mandatory)
    eval_rows: int = 256  # the last rows, never trained on


@register("source", "npy", NpyConfig)
class NpySource(ActivationSource):
    def __init__(self, cfg, spec):
        super().__init__(cfg, spec)
        self.data = torch.from_numpy(np.load(cfg.path)).float()
        self.d_in = self.data.shape[1]  # the SAE is built before setup(): d_in is known from here on
        self.train_rows = self.data[:-cfg.eval_rows]

    def train_batches(self, batch_size):
        g = torch.Generator().manual_seed(self.spec.seed)
        for _ in range(self.spec.train_tokens // batch_size):
            yield self.train_rows[torch.randint(len(self.train_rows), (batch_size,), generator=g)]

    def eval_batches(self, batch_size):
        yield from self.data[-self.cfg.eval_rows:].split(batch_size)

    def describe(self):
        return {"activations_path": self.cfg.path}
'''

COSINE_EVALUATOR = '''
"""Mean cosine similarity between each held-out activation and its reconstruction."""
from dataclasses import dataclass

import torch

from saefw.evals.base import Evaluator
from saefw.registry import register


@dataclass
class CosineConfig:
    eps: float = 1e-8


@register("evaluator", "recon_cosine", CosineConfig)
class ReconCosine(Evaluator):
    def begin(self, sae, source):
        super().begin(sae, source)
        self.total, self.count = 0.0, 0

    def update(self, x, f, x_hat):
        self.total += torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=self.cfg.eps).sum().item()
        self.count += len(x)

    def compute(self):
        return {"recon_cosine": self.total / max(self.count, 1)}
'''

TIED_ARCH = '''
"""A tied-weights SAE: the decoder is the encoder's transpose."""
from dataclasses import dataclass

import torch
from torch import nn

from saefw.arch.base import SAE, SparsityInput, TrainOutput
from saefw.registry import register


@dataclass
class TiedConfig:
    init_norm: float = 0.1  # each latent's direction's norm at init


@register("arch", "tied", TiedConfig)
class TiedSAE(SAE):
    """f = ReLU((x - b_dec) W + b_enc); x_hat = c f W^T + b_dec, c = 1 in training (saving folds the input
    scale into c: W -> W s, b_dec -> b_dec / s, c -> c / s^2)."""

    def __init__(self, cfg, d_in, d_sae):
        super().__init__(cfg, d_in, d_sae)
        w = torch.randn(d_in, d_sae)
        self.W_enc = nn.Parameter(w / w.norm(dim=0, keepdim=True) * cfg.init_norm)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("decoder_scale", torch.tensor(1.0))

    @property
    def W_dec(self):
        return self.W_enc.t() * self.decoder_scale

    def _encode(self, x):
        return torch.relu(self.pre_acts(x))

    def train_forward(self, x, dead_mask=None):
        f = self._encode(x)
        return TrainOutput(f, (self._decode(f) - x).pow(2).sum(-1).mean(), SparsityInput(acts=f, W_dec=self.W_dec))

    @torch.no_grad()
    def fold_input_scale(self, s):
        self.W_enc.mul_(s)
        self.b_dec.div_(s)
        self.decoder_scale.div_(s * s)
'''

D_IN, N_ROWS, EVAL_ROWS = 8, 2048, 256
TRAIN = ["source=npy", "arch=tied", "evaluators=[l0,reconstruction,recon_cosine]", "total_tokens=2048",
         "train.batch_size=128", "train.eval_every_steps=0", "expansion_factor=2", "wandb.mode=disabled",
         "trainer.enable_progress_bar=false"]


def _activations(path):
    """Sparse non-negative sums of 16 fixed directions in R^8 (a small superposition), saved as float32 .npy."""
    g = np.random.default_rng(0)
    dirs = g.normal(size=(16, D_IN))
    acts = (g.random((N_ROWS, 16)) < 0.2) * g.uniform(0.5, 1.5, (N_ROWS, 16))
    np.save(path, (acts @ dirs).astype(np.float32))


def _cosine_by_hand(run_dir, x: torch.Tensor) -> float:
    """recon_cosine from the saved tensors (no saefw code): f = ReLU((x − b_dec)W + b_enc), x̂ = c·fWᵀ + b_dec."""
    t = load_file(str(run_dir / "sae_weights.safetensors"))
    f = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    x_hat = t["decoder_scale"] * f @ t["W_enc"].T + t["b_dec"]
    return torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).mean().item()


@pytest.fixture(scope="module")
def author(tmp_path_factory):
    """The author's working directory after training, sweeping, and a training command missing source.path."""
    cwd = tmp_path_factory.mktemp("author")
    (cwd / "plugins").mkdir()
    for name, text in (("npy_source", NPY_SOURCE), ("recon_cosine", COSINE_EVALUATOR), ("tied", TIED_ARCH)):
        (cwd / "plugins" / f"{name}.py").write_text(text)
    _activations(cwd / "acts.npy")
    npy = f"source.path={cwd / 'acts.npy'}"
    train, sweep, unset = run_clis([[*TRAIN, npy, f"hydra.run.dir={cwd / 'run'}"],
                                    ["-m", *TRAIN, npy, "target_l0=2,4", f"hydra.sweep.dir={cwd / 'sweep'}"],
                                    [*TRAIN, f"hydra.run.dir={cwd / 'unset'}"]], cwd=cwd)
    return cwd, train, sweep, unset


def test_train_sweep_and_evaluate_with_only_the_run_dir(author):
    cwd, train, sweep, _ = author
    assert train.returncode == 0, train.stderr[-3000:]
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    x = torch.from_numpy(np.load(cwd / "acts.npy"))
    run = cwd / "run"
    trained = json.loads((run / "metrics.json").read_text())
    assert (trained["arch"], trained["source"], trained["d_in"], trained["d_sae"]) == ("tied", "npy", D_IN, 16)
    # training evaluated the live SAE; the hand computation reads the saved (scale-folded) weights
    assert trained["recon_cosine"] == pytest.approx(_cosine_by_hand(run, x[-EVAL_ROWS:]), abs=1e-5)
    assert 0.3 < trained["recon_cosine"] < 1.0

    evals = run_clis([[f"sae={run}", f"hydra.run.dir={cwd / 'e_only_sae'}"],
                      [f"sae={run}", "source=npy", f"hydra.run.dir={cwd / 'e_named'}"],
                      [f"sae={run}", "source=npy", "source.eval_rows=128", f"hydra.run.dir={cwd / 'e_override'}"]],
                     cwd=cwd, module="saefw.evaluate")
    for r in evals:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
    for name in ("e_only_sae", "e_named"):  # source.path and the evaluator list came from the run dir
        m = json.loads((cwd / name / "metrics.json").read_text())
        assert (m["source"], m["arch"], m["eval_tokens"]) == ("npy", "tied", EVAL_ROWS), name
        assert m["recon_cosine"] == pytest.approx(trained["recon_cosine"], abs=1e-6), name
        assert m["l0"] == pytest.approx(trained["l0"], abs=1e-5), name
    m = json.loads((cwd / "e_override" / "metrics.json").read_text())  # the command line wins over the run
    assert m["eval_tokens"] == 128
    assert m["recon_cosine"] == pytest.approx(_cosine_by_hand(run, x[-128:]), abs=1e-5)

    sweep_dir = cwd / "sweep"
    rows = read_csv(sweep_dir / "tradeoff.csv")
    assert [(r["arch"], r["status"], r["target_l0"]) for r in rows] == [("tied", "ok", "2"), ("tied", "ok", "4")]
    assert (sweep_dir / "tradeoff.png").stat().st_size > 1000
    for job in sorted(p.parent for p in sweep_dir.glob("*/metrics.json")):
        assert json.loads((job / "metrics.json").read_text())["recon_cosine"] == pytest.approx(
            _cosine_by_hand(job, x[-EVAL_ROWS:]), abs=1e-5)


def test_an_unset_source_path_is_one_error_line_naming_the_key(author):
    _, _, _, unset = author
    assert unset.returncode == 2
    assert "Traceback" not in unset.stderr
    assert unset.stderr.strip().splitlines()[-1] == (
        "error: source.path is not set (??? in the config: source=npy needs it); set it on the command line: "
        "source.path=<value>")
