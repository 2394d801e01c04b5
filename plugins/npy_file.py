"""A worked plugin: activations you already have, as one ``.npy`` array (``source=npy_file``). Copy this file into
``plugins/`` of your working directory and ``python -m saefw source=npy_file source.path=acts.npy`` trains on it;
no framework file is edited.

The file is memory-mapped, so an array larger than RAM trains as well as a small one: each batch reads only its
rows. One decorator registers the class and its dataclass config; Hydra type-checks ``source.eval_rows=512``, and
``python -m saefw --help`` lists the source with each option's help.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING

from saefw.errors import SaefwError
from saefw.registry import register
from saefw.sources.base import ActivationSource


@dataclass
class NpyFileConfig:
    path: str = field(default=MISSING, metadata={"help": "the .npy file of activations [n_tokens, d_in] (mandatory)"})
    eval_rows: int = field(default=1024, metadata={"help": (
        "the last rows of the array, never trained on: the held-out split every evaluation reads")})


@register("source", "npy_file", NpyFileConfig)
class NpyFileSource(ActivationSource):
    """Rows of a 2-D ``.npy`` array [n_tokens, d_in]: training samples rows of the first n − eval_rows with
    replacement (seeded by the run's seed), the held-out split is the last ``eval_rows`` rows, in order."""

    def __init__(self, cfg: NpyFileConfig, spec):
        super().__init__(cfg, spec)
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise SaefwError(f"source.path={cfg.path!r}: no such file (a .npy array of activations [n_tokens, d_in])")
        try:
            self.data = np.load(path, mmap_mode="r")
        except ValueError as e:
            raise SaefwError(f"source.path={cfg.path!r} is not a readable .npy array: {e}") from e
        if self.data.ndim != 2:
            raise SaefwError(f"source.path={cfg.path!r} holds an array of shape {self.data.shape}; "
                             "expected 2-D [n_tokens, d_in]")
        n = len(self.data)
        if not 0 < cfg.eval_rows < n:
            raise SaefwError(f"source.eval_rows={cfg.eval_rows} must be between 1 and {n - 1} "
                             f"(the array has {n} rows)")
        self.d_in = self.data.shape[1]  # the SAE is built before setup(): d_in must be known here
        self.n_train = n - cfg.eval_rows

    def train_batches(self, batch_size: int):
        g = np.random.default_rng(self.spec.seed)
        for _ in range(self.spec.train_tokens // batch_size):
            rows = np.sort(g.integers(self.n_train, size=batch_size))  # sorted: the map is read front to back
            yield torch.from_numpy(self.data[rows].astype(np.float32))

    def eval_batches(self, batch_size: int):
        for start in range(self.n_train, len(self.data), batch_size):
            yield torch.from_numpy(self.data[start:start + batch_size].astype(np.float32))

    def describe(self) -> dict:
        return {"activations_path": str(Path(self.cfg.path).expanduser().resolve())}
